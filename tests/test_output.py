"""What a user sees: the ``edgelake`` program's own lines only. What TensorFlow, absl, CUDA probing, Spark's JVM and Beam print
themselves goes to the native log the terminal names, piped or on a terminal; ``--verbose`` shows it; ``--help`` loads none of them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from edgelake.broker import EmbeddedBroker
from edgelake.ingest.sources import synthetic
from support import append_silver

# Lines the libraries write themselves: absl's and TensorFlow's (I0000/W0000/E0000 …), CUDA probing, the JVM and Spark's log4j, Beam.
NOISE = re.compile(r"cuInit|cuda|tensorflow/|absl|oneDNN|[IWE]0000 |log4j|WARN |NativeCodeLoader|incubator|apitools|XNNPACK")
NAMED = re.compile(r"TensorFlow, Spark and Beam log to (\S+) \(--verbose shows them here\)")
HEAVY = ("tensorflow", "keras", "pyspark", "apache_beam", "deltalake", "pyarrow", "pandas", "numpy", "fastapi")


@pytest.fixture(scope="module")
def fraud_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small silver lake of synthetic transactions and labels: enough for ``train fraud`` to start Spark and TensorFlow."""
    lake = tmp_path_factory.mktemp("output") / "lake"
    config = synthetic.SyntheticConfig(seed=3, cards=60, merchants=40, fraud_rate=0.06)
    append_silver(str(lake), list(synthetic.transactions(config, 1500)))
    append_silver(str(lake), list(synthetic.labels(config, 1500)))
    return lake


def train_fraud_env(fraud_lake: Path, run: Path) -> dict[str, str]:
    """A data dir of the run's own and a copy of the lake (each run publishes a version into it)."""
    shutil.copytree(fraud_lake, run / "lake")
    return {**os.environ, "EDGELAKE_DATA_DIR": str(run / "data"), "EDGELAKE_LAKE_ROOT": str(run / "lake"), "COLUMNS": "200"}


TRAIN_FRAUD = ["train", "fraud", "--source", "synthetic", "--epochs", "1", "--device", "cpu"]


@pytest.mark.parametrize("terminal", ["piped", "pty"])
def test_tensorflow_and_spark_output_goes_to_the_native_log_the_terminal_names(fraud_lake: Path, tmp_path: Path, terminal: str) -> None:
    command = [sys.executable, "-m", "edgelake", *TRAIN_FRAUD]
    env = train_fraud_env(fraud_lake, tmp_path)
    if terminal == "piped":
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr
        screen = result.stdout + result.stderr
    else:
        screen = on_a_terminal(command, env)
    assert "fraud v1 published as candidate" in screen, screen
    assert_quiet(screen)
    native = named_native_log(screen)
    assert native == tmp_path / "data" / "logs" / "native.log"
    logged = native.read_text()
    assert "absl" in logged and "WARN NativeCodeLoader" in logged, logged  # TensorFlow's native lines, Spark's log4j through its config
    assert "tensorflow: Assets written to" in logged, logged  # TensorFlow's Python logger


def test_verbose_shows_what_the_libraries_print(fraud_lake: Path, tmp_path: Path) -> None:
    env = train_fraud_env(fraud_lake, tmp_path)
    result = subprocess.run([sys.executable, "-m", "edgelake", "--verbose", *TRAIN_FRAUD], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "fraud v1 published as candidate" in result.stdout
    assert "absl" in result.stderr and "log4j" in result.stderr and "NativeCodeLoader" in result.stderr, result.stderr
    assert not NAMED.search(result.stderr) and not (tmp_path / "data" / "logs" / "native.log").exists()


def test_beams_import_warning_goes_to_the_native_log(kafka: EmbeddedBroker, tmp_path: Path) -> None:
    env = {
        **os.environ, "EDGELAKE_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "EDGELAKE_TOPIC_PREFIX": f"out{uuid.uuid4().hex[:8]}-",
        "EDGELAKE_DATA_DIR": str(tmp_path / "data"), "EDGELAKE_LAKE_ROOT": str(tmp_path / "lake"), "COLUMNS": "200",
    }
    command = [sys.executable, "-m", "edgelake", "ingest", "run", "--once", "--topics", "transactions"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "│ transactions " in result.stdout
    assert_quiet(result.stdout + result.stderr)
    assert "apitools not found" in named_native_log(result.stderr).read_text()

    verbose = subprocess.run([sys.executable, "-m", "edgelake", "--verbose", *command[3:]], capture_output=True, text=True, env=env, timeout=300)
    assert verbose.returncode == 0, verbose.stderr
    assert "apitools not found" in verbose.stderr


def test_help_loads_no_heavy_library_and_prints_no_warning() -> None:
    program = Path(sys.executable).with_name("edgelake")  # the installed command, as a user runs it
    result = subprocess.run([program, "--help"], capture_output=True, text=True, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}, timeout=60)
    assert result.returncode == 0 and "Usage: edgelake" in result.stdout
    lines = result.stderr.splitlines()
    assert all(line.startswith("import time:") for line in lines), [line for line in lines if not line.startswith("import time:")]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in lines[1:]}
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def assert_quiet(screen: str) -> None:
    """No line of ``screen`` is one the libraries wrote themselves."""
    noisy = [line for line in screen.splitlines() if NOISE.search(line) and not NAMED.search(line)]
    assert not noisy, "\n".join(noisy)


def named_native_log(screen: str) -> Path:
    """The native log that the one line on the terminal names; it exists."""
    named = NAMED.findall(screen)
    assert len(named) == 1, screen
    path = Path(named[0])
    assert path.is_file(), path
    return path


def on_a_terminal(command: list[str], env: dict[str, str], timeout_s: float = 300) -> str:
    """What ``command`` shows on a pseudo-terminal (stdout and stderr both), once it exits; it must exit 0."""
    import pty
    import select

    main, child = pty.openpty()
    process = subprocess.Popen(command, stdin=child, stdout=child, stderr=child, env=env)
    os.close(child)
    shown, deadline = b"", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if select.select([main], [], [], 1.0)[0]:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the terminal's last writer exited
                break
            if not chunk:
                break
            shown += chunk
        elif process.poll() is not None:
            break
    assert process.wait(10) == 0, shown.decode(errors="replace")
    os.close(main)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))  # without colours and cursor moves
