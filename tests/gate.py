"""The `gate` editor for tests that disturb a job at a known point (faults, a killed driver): a plug-in,
installed for the module, that returns the sample's own `<key>.edited.png` (as `provided` does) but
first reports its arrival (key, pid, node) in a folder and waits there until the test lets it pass.
No test waits on the clock: it holds the job where it wants it, acts, then opens the gate."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

# how long an awaited event may take before the test gives up (a guard against hanging, not a timing)
PATIENCE_S = 600

GATE_PLUGIN = '''
import json
import os
import time
from pathlib import Path

import ray

from anyv2v_batch.editors.provided import ProvidedEditor


class GateEditor(ProvidedEditor):
    """`provided`, after reporting at the gate folder and waiting there until the test lets the sample pass."""

    name = "gate"
    description = "provided, held at a gate the test opens (fault tests)"
    options = {"dir": "the gate folder"}

    def edit(self, frame, options, sample):
        gate = Path(options["dir"])
        arrival = {"key": sample.key, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}
        name = f"arrived-{sample.key}-{os.getpid()}"
        (gate / f".{name}").write_text(json.dumps(arrival))
        os.replace(gate / f".{name}", gate / name)  # whole, or not there
        while not ((gate / "open").exists() or (gate / f"pass-{sample.key}").exists()):
            time.sleep(0.02)  # waits for the test's file, however long that takes
        return super().edit(frame, options, sample)
'''


# --- the gate: the test's side ---------------------------------------------------------------------


class Gate:
    """The folder the gate editor reports to: who arrived where, and what may pass."""

    def __init__(self, folder: Path):
        self.folder = folder

    def close(self) -> None:
        """A fresh gate: nothing has arrived, nothing may pass."""
        for f in self.folder.iterdir():
            f.unlink()

    def open(self) -> None:
        (self.folder / "open").touch()

    def let_pass(self, key: str) -> None:
        (self.folder / f"pass-{key}").touch()

    def arrivals(self) -> dict[str, dict]:
        """Arrival file name -> {key, pid, node}: one per (sample, actor process) that reached the gate."""
        return {f.name: json.loads(f.read_text()) for f in self.folder.glob("arrived-*")}

    def hold_second_shard(self, alive) -> dict:
        """Let every sample of the first shard to reach the editor pass; hold the first sample of the other
        shard. The editor pool is one actor running one task at a time, and a task's clips come from one shard
        (each shard is read by its own task), so when this returns that actor is blocked on the held sample
        and the clips of its earlier tasks are free to finish. Returns the held sample's arrival."""
        seen: set[str] = set()
        first_shard = None
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline:
            for name, arrival in sorted(self.arrivals().items()):
                if name in seen:
                    continue
                seen.add(name)
                first_shard = first_shard or shard_of(arrival["key"])
                if shard_of(arrival["key"]) != first_shard:
                    return arrival
                self.let_pass(arrival["key"])
            assert alive(), "the job ended before it reached the gate"
            time.sleep(0.02)
        raise AssertionError("no sample of the second shard reached the gate")


def shard_of(key: str) -> str:
    return key[len("clip")]  # clip<shard><clip>


def wait_until(condition, alive, what: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        assert alive(), f"the job ended before {what}"
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


# --- cluster, inputs, jobs, outputs -----------------------------------------------------------------


def install_plugin(tmp_path_factory, module: str, source: str, entry_points: dict[str, str]) -> Path:
    """A one-module package `module` holding `source`, with `anyv2v_batch.editors` entry points (name ->
    "module:Class"), pip-installed into a fresh folder (a site) that the caller puts on the path."""
    pkg = tmp_path_factory.mktemp(f"{module}-src")
    (pkg / f"{module}.py").write_text(source)
    points = "\n".join(f'{name} = "{target}"' for name, target in entry_points.items())
    (pkg / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{module.replace("_", "-")}"\nversion = "0.1"\n'
        f'[project.entry-points."anyv2v_batch.editors"]\n{points}\n'
        f'[tool.setuptools]\npy-modules = ["{module}"]\n'
    )
    site = tmp_path_factory.mktemp(f"{module}-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), str(pkg)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return site


def install_gate_plugin(tmp_path_factory) -> Path:
    """The gate editor installed as a package with an entry point, into a fresh folder (a site)."""
    return install_plugin(
        tmp_path_factory, "anyv2v_gate_editor", GATE_PLUGIN, {"gate": "anyv2v_gate_editor:GateEditor"}
    )
