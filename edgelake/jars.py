"""JVM jars from Maven Central: fetched once by the install step from the pinned poms under
``infra/jars/<name>/pom.xml``, then passed to Java as local paths (nothing is downloaded at run time)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgelake.errors import UserError

POM_DIR = Path(__file__).resolve().parents[1] / "infra" / "jars"
_STAMP = ".pom.sha256"  # the pom a folder's jars were fetched for


class JarsMissing(UserError, RuntimeError):
    """A jar set was not fetched, or was fetched for another version of its pom."""


def jar_sets(pom_dir: Path = POM_DIR) -> list[str]:
    """The names of the jar sets the project pins."""
    return sorted(pom.parent.name for pom in pom_dir.glob("*/pom.xml"))


def classpath(jars_dir: Path, name: str, pom_dir: Path = POM_DIR) -> str:
    """The Java classpath of the fetched jar set ``name``, absolute (a Spark executor or a daemon runs in a folder of its own);
    ``JarsMissing`` if it is absent or stale."""
    folder = jars_dir / name
    if not _current(folder, pom_dir / name / "pom.xml"):
        raise JarsMissing(
            f"the {name} jars are not in {folder} (or were fetched for another pom): run `make setup` or `edgelake jars fetch {name}`"
        )
    return str(folder.resolve() / "*")


def fetch(jars_dir: Path, name: str, pom_dir: Path = POM_DIR, log_file: Path | None = None) -> bool:
    """Copy jar set ``name`` (its pom's dependencies) into ``jars_dir/name`` with Maven; False if already there."""
    pom = pom_dir / name / "pom.xml"
    if not pom.is_file():
        raise JarsMissing(f"no pinned pom for '{name}' at {pom}; known: {', '.join(jar_sets(pom_dir)) or 'none'}")
    folder = jars_dir / name
    if _current(folder, pom):
        return False
    mvn = shutil.which("mvn")
    if mvn is None:
        raise JarsMissing("Maven (mvn) is not installed: run `make setup` (Debian package maven) or install it")
    jars_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=jars_dir)).resolve()  # Maven resolves paths against the pom
    command = [
        mvn, "--batch-mode", "--quiet", "--no-transfer-progress", "-Dstyle.color=never", "-f", str(pom),
        "dependency:copy-dependencies", f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            log_file.write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise JarsMissing(f"Maven could not fetch the {name} jars ({pom}):\n{(result.stdout + result.stderr)[-3000:]}")
        (staging / _STAMP).write_text(_sha256(pom))
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


def _current(folder: Path, pom: Path) -> bool:
    try:
        return (folder / _STAMP).read_text() == _sha256(pom)
    except OSError:
        return False


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
