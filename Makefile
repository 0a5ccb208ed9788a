# cosim: two commands on a fresh machine: `make run`, then `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SCENARIO ?= scenarios/rural3-summer-pv.yaml

.PHONY: setup run test scenarios report lint clean bench year compare compare-storage compare-curtailment docs

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

# time per round against pandapower's run_timeseries (results/bench/bench.json); ROUNDS=2000;
# then every mechanism's median round on its rural3 day (results/bench/mechanisms.json); REPEATS=3
bench: setup
	$(BIN)/python -m cosim.bench.timing --rounds $(or $(ROUNDS),2000)
	$(BIN)/python -m cosim.bench.bilateral --prosumers 100 250 500 1000 --rounds 20
	$(BIN)/python -m cosim.bench.mechanisms --rounds 96 --repeats $(or $(REPEATS),3)

# a whole year of the default scenario (35,136 rounds): wall time and peak memory in
# results/rural3-year/summary.json; an interrupted run carries on with RESUME=1
year: setup
	$(BIN)/cosim run scenarios/year/rural3-year.yaml --no-report $(if $(RESUME),--resume)

# every market structure on the same feeder and day, side by side in results/compare
COMPARE := uniform pay-as-bid mcafee huang vcg bilateral community-sdr community-mmr bill-sharing \
	fixed-price hybrid shapley stackelberg
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
