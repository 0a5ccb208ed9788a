"""Grid-operator impact studies: sweeps and stochastic hosting capacity on Dask (`cosim study`)."""
