"""The system operator's web portal (``cosim portal``): operators admit prosumers, set the
market and network settings, launch and watch runs and read their reports and ledgers;
prosumers see their own bills and trades. It sits on top of the simulation: a run is a
``cosim run`` process, settings are checked by the scenario loader, and results are read
from the run's folder.

Modules: `cosim.portal.app` (the application), `cosim.portal.web` (sessions, forms,
pages), `cosim.portal.auth`, `cosim.portal.operator`, `cosim.portal.prosumer` (routes),
`cosim.portal.settings` (settings as a scenario), `cosim.portal.jobs` (run processes),
`cosim.portal.db` (database), `cosim.portal.security`, `cosim.portal.serve` (command line).
"""
