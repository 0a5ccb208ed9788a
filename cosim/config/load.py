"""Loading a scenario file: the schema (`cosim.config.scenario`), the mechanism's options,
the network file (`cosim.config.network_file`) and what the scenario names
(`cosim.config.cross_checks`), every problem reported at once."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from cosim.config.cross_checks import check_against_network
from cosim.config.errors import InputError
from cosim.config.files import format_validation_error, read_yaml
from cosim.config.network_file import find_network_file, load_network_spec
from cosim.config.scenario import Scenario


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; all problems are reported at once.

    Also checks what pydantic cannot see alone: that the mechanism is registered, the
    network file exists and is valid, and the buses and files the scenario names exist
    (`cosim.config.cross_checks`).
    """
    from cosim.markets import MECHANISMS

    path = Path(path)
    data = read_yaml(path)
    problems = []
    scenario = None
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as err:
        problems += format_validation_error(err)
    market = data.get("market") if isinstance(data.get("market"), dict) else {}
    mechanism = market.get("mechanism", "uniform")
    if isinstance(mechanism, str) and mechanism not in MECHANISMS:
        problems.append(f"market.mechanism: expected one of {sorted(MECHANISMS)}, found {mechanism!r}")
    elif isinstance(mechanism, str) and isinstance(market.get("options", {}), dict):
        try:
            MECHANISMS[mechanism].Options.model_validate(market.get("options", {}))
        except ValidationError as err:
            problems += [f"market.options.{line}" for line in format_validation_error(err)]
    network = data.get("network")
    network_file = find_network_file(network, path) if isinstance(network, str) else None
    if isinstance(network, str) and network_file is None:
        problems.append(
            f"network: expected a file networks/{network}.yaml or a path to one, found no such file"
        )
    csv = scenario.storage.ev.sessions_csv if scenario is not None else None
    if csv and not (Path(csv) if Path(csv).is_absolute() else path.parent / csv).is_file():
        problems.append(f"storage.ev.sessions_csv: expected a CSV file (relative to the scenario file), "
                        f"found no such file {csv!r}")
    if problems:
        raise InputError(path, problems)
    spec = load_network_spec(network_file)  # raises its own InputError naming the network file
    check_against_network(scenario, spec, path)
    return scenario
