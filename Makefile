# cosim: two commands on a fresh machine: `make run`, then `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SCENARIO ?= scenarios/rural3-summer-pv.yaml

.PHONY: setup run test scenarios report lint clean bench year compare compare-storage compare-curtailment compare-charges docs \
	portal portal-screenshots initiatives compare-flexibility study studies bench-study \
	bench-threephase compare-physics

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/cosim run $(SCENARIO)

test: setup
	$(BIN)/python -m pytest

scenarios: setup
	@for f in scenarios/*.yaml; do echo "== $$f"; $(BIN)/cosim run $$f || exit $$?; done

report: setup
	@test -n "$(RUN)" || (echo "usage: make report RUN=results/<scenario>" >&2; exit 2)
	$(BIN)/cosim report $(RUN)

# the default week as whole processes: cosim run against pandapower's run_timeseries with and
# without lightsim2grid, alternating, medians of REPEATS=3 (results/bench/week.json); then the
# time per round against run_timeseries in one process (results/bench/bench.json); ROUNDS=2000;
# then every mechanism's median round on its rural3 day (results/bench/mechanisms.json)
bench: setup
	$(BIN)/python -m cosim.bench.week --repeats $(or $(REPEATS),3)
	$(BIN)/python -m cosim.bench.timing --rounds $(or $(ROUNDS),2000)
	$(BIN)/python -m cosim.bench.bilateral --prosumers 100 250 500 1000 --rounds 20
	$(BIN)/python -m cosim.bench.mechanisms --rounds 96 --repeats $(or $(REPEATS),3)

# the default impact study: PV hosting capacity of rural3, a summer week, 20 seeds, four settings (passive, curtailment, P2P, flexibility market)
# (results/studies/rural3-hosting-summer/report.html); an interrupted study carries on with RESUME=1;
# SCHEDULER=tcp://host:port sends it to an existing Dask cluster, WORKERS=N sizes the embedded one
STUDY ?= scenarios/studies/rural3-hosting-summer.yaml
study: setup
	$(BIN)/cosim study $(STUDY) $(if $(RESUME),--resume) $(if $(SCHEDULER),--scheduler $(SCHEDULER)) \
	  $(if $(WORKERS),--workers $(WORKERS))

# every shipped study: the default, every mechanism at three PV levels, EV hosting capacity in winter
studies: setup
	@for f in scenarios/studies/*.yaml; do echo "== $$f"; $(BIN)/cosim study $$f || exit $$?; done

# the default week balanced against three-phase, RUNS alternating cosim runs each
# (results/bench/threephase_week.json); then one power flow of each kind (threephase.json)
bench-threephase: setup
	$(BIN)/python -m cosim.bench.threephase --week --runs $(or $(RUNS),1)
	$(BIN)/python -m cosim.bench.threephase --repeats $(or $(REPEATS),20)

# 1 against 2 Dask workers on the default study with SEEDS seeds (results/bench/study_workers.json)
bench-study: setup
	$(BIN)/python -m cosim.bench.study_workers --seeds $(or $(SEEDS),4) --workers 1 2

# a whole year of the default scenario (35,136 rounds): wall time and peak memory in
# results/rural3-year/summary.json, then the time to verify its ledger; an interrupted run
# carries on with RESUME=1
year: setup
	$(BIN)/cosim run scenarios/year/rural3-year.yaml --no-report $(if $(RESUME),--resume)
	$(BIN)/cosim ledger verify results/rural3-year

# every market structure on the same feeder and day, side by side in results/compare
COMPARE := uniform pay-as-bid mcafee huang vcg bilateral community-sdr community-mmr bill-sharing \
	fixed-price hybrid shapley stackelberg
# the default week balanced and in three phases, side by side in results/compare-physics
compare-physics: setup
	$(BIN)/cosim run scenarios/rural3-summer-pv.yaml --out results/compare-runs/physics-balanced --no-report
	$(BIN)/cosim run scenarios/rural3-summer-pv-3ph.yaml --out results/compare-runs/physics-three-phase --no-report
	$(BIN)/cosim compare results/compare-runs/physics-balanced results/compare-runs/physics-three-phase \
	  --out results/compare-physics

compare: setup
	@for m in $(COMPARE); do echo "== scenarios/rural3-$$m.yaml"; \
	  $(BIN)/cosim run scenarios/rural3-$$m.yaml --out results/compare-runs/$$m --no-report || exit $$?; done
	$(BIN)/cosim compare $(addprefix results/compare-runs/,$(COMPARE)) --out results/compare

# no storage, the battery rule and the three day-ahead strategies, side by side in
# results/compare-storage
STORAGE := none rule private central distributed
compare-storage: setup
	@for s in $(STORAGE); do echo "== scenarios/rural3-storage-$$s.yaml"; \
	  $(BIN)/cosim run scenarios/rural3-storage-$$s.yaml --out results/compare-runs/storage-$$s --no-report || exit $$?; done
	$(BIN)/cosim compare $(addprefix results/compare-runs/storage-,$(STORAGE)) --out results/compare-storage

# the default week under each curtailment rule (feedback.curtailment_rule), side by side in
# results/compare-curtailment. sensitivity-forced is the sensitivity rule taken the way the
# sharing rules go (forced curtailment with its overshoot, feedback.max_iterations: 1), so
# that the cost of sharing shows apart from that of the overshoot.
CURTAIL := sensitivity pro-rata equal-share
compare-curtailment: setup
	@for c in $(CURTAIL); do echo "== scenarios/rural3-curtail-$$c.yaml"; \
	  $(BIN)/cosim run scenarios/rural3-curtail-$$c.yaml --out results/compare-runs/curtail-$$c --no-report || exit $$?; done
	@mkdir -p results/compare-runs
	sed -e 's/^name: .*/name: rural3-curtail-sensitivity-forced/' -e 's/^  max_iterations: .*/  max_iterations: 1/' \
	  scenarios/rural3-curtail-sensitivity.yaml > results/compare-runs/curtail-sensitivity-forced.yaml
	$(BIN)/cosim run results/compare-runs/curtail-sensitivity-forced.yaml --out results/compare-runs/curtail-sensitivity-forced --no-report
	$(BIN)/cosim compare $(addprefix results/compare-runs/curtail-,$(CURTAIL) sensitivity-forced) --out results/compare-curtailment

# the default week under each network-charge method (feedback.charge_method: none, flat at
# 0.05/kWh, sensitivity at 0.30/kWh of losses), side by side in results/compare-charges: the
# charges follow each prosumer's injection, and the price-responsive batteries see them
CHARGES := none flat sensitivity
compare-charges: setup
	@mkdir -p results/compare-runs
	@for c in $(CHARGES); do echo "== charge_method: $$c"; \
	  rate=0.30; test $$c = flat && rate=0.05; \
	  sed -e "s/^name: .*/name: rural3-charges-$$c/" -e "s/^  charge_method: .*/  charge_method: $$c/" \
	    -e "s/^  charge_rate_per_kwh: .*/  charge_rate_per_kwh: $$rate/" \
	    $(SCENARIO) > results/compare-runs/charges-$$c.yaml; \
	  $(BIN)/cosim run results/compare-runs/charges-$$c.yaml --out results/compare-runs/charges-$$c --no-report || exit $$?; done
	$(BIN)/cosim compare $(addprefix results/compare-runs/charges-,$(CHARGES)) --out results/compare-charges

# the operator's web portal on http://127.0.0.1:8000/ (SQLite under results/portal/); create the
# first operator with: .venv/bin/cosim portal create-operator EMAIL
portal: setup
	$(BIN)/cosim portal $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

# the portal's screenshots in docs/img (the browser test, writing them there)
portal-screenshots: setup
	PORTAL_SCREENSHOTS=docs/img $(BIN)/python -m pytest tests/test_portal_browser.py

# every real initiative's preset (scenarios/initiatives/*.yaml) on the same feeder and day, one row
# each in results/initiatives/initiatives.html with a link to each run's report (docs/initiatives.md)
INITIATIVES := $(basename $(notdir $(wildcard scenarios/initiatives/*.yaml)))
initiatives: setup
	@for n in $(INITIATIVES); do echo "== scenarios/initiatives/$$n.yaml"; \
	  $(BIN)/cosim run scenarios/initiatives/$$n.yaml --out results/initiatives/$$n || exit $$?; done
	$(BIN)/python -m cosim.reporting.initiatives --presets scenarios/initiatives --runs results/initiatives

# the DSO flexibility market against curtailment by feedback on the default week
# (scenarios/rural3-summer-pv.yaml: rural3, 7 summer days, 100 % loading limit), the same
# scenario with mechanism flexibility on the same uniform energy market, side by side in
# results/compare-flexibility (docs/initiatives.md)
compare-flexibility: setup
	@mkdir -p results/compare-runs
	sed -e 's/^name: .*/name: rural3-summer-flexibility/' -e 's/^  mechanism: uniform/  mechanism: flexibility/' \
	  scenarios/rural3-summer-pv.yaml > results/compare-runs/flex-market.yaml
	$(BIN)/cosim run scenarios/rural3-summer-pv.yaml --out results/compare-runs/flex-curtailment --no-report
	$(BIN)/cosim run results/compare-runs/flex-market.yaml --out results/compare-runs/flex-market --no-report
	$(BIN)/cosim compare results/compare-runs/flex-curtailment results/compare-runs/flex-market --out results/compare-flexibility

# the documentation site (docs/, mkdocs.yml) into site/; strict: a warning, a broken link or
# anchor, or a docstring the API reference cannot read fails the build
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

lint: setup
	$(BIN)/ruff check cosim tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
	find results -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
