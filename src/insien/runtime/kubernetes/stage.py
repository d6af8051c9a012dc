"""`python -m insien.runtime.kubernetes.stage [ROOT]`: put the agent's runtime on this node, for
servers with `INSIEN_K8S_AGENT_RUNTIME_DIR=ROOT` (default `/var/lib/insien/agent-runtime`).

Run it as root on every node that runs sandbox pods, from the server's own build (the image of
`nox -s deploy-image`, e.g. as a DaemonSet's init container with ROOT a hostPath, or by hand):
the folder is named after the runtime's digest, so a server finds only the runtime it made,
and servers of other builds keep theirs. Pods then mount it read-only, one copy per node (its
pages shared by every sandbox), and nothing of it travels per create. The files are root's
and read-only; the folder appears whole or not at all (written beside it, then renamed).
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
import tempfile
from pathlib import Path

from .. import agent_runtime
from .runtime import staged_dir

DEFAULT_ROOT = "/var/lib/insien/agent-runtime"


def stage(root: Path, bundle: agent_runtime.Bundle) -> Path:
    """Write `bundle` under `root` (its digest's folder), unless it is there already."""
    target = Path(staged_dir(str(root), bundle))
    if (target / "bin" / "python3").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    scratch = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    files = {name.removeprefix("rt/"): data for name, data in bundle.files.items()}
    with tarfile.open(fileobj=io.BytesIO(agent_runtime.archive(files))) as tar:
        tar.extractall(scratch, filter="fully_trusted")
    for folder, _, names in os.walk(scratch):
        os.chmod(folder, 0o755)
        for name in names:
            path = Path(folder, name)
            path.chmod(path.stat().st_mode & 0o555)
    # An empty folder of that name (a container runtime made it for a pod's mount) is replaced.
    scratch.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    bundle = agent_runtime.bundle()
    if bundle is None:
        print("this host cannot make the agent's runtime (see the log above)", file=sys.stderr)
        return 1
    print(stage(Path(args[0] if args else DEFAULT_ROOT), bundle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
