"""`maw-rerank` as a DDP worker of tests/train/test_ddp.py; with ``MAW_TEST_KILL_AT_STEP=N`` the main process
kills itself with SIGKILL (kill -9: no cleanup, no exception) right after optimizer step N is logged."""

import os
import signal
import sys

from maw_reranker.train import trainer

KILL_AT = int(os.environ.get("MAW_TEST_KILL_AT_STEP", "0"))
_init = trainer.Trainer.__init__


def _kill(step, row):
    if step == KILL_AT and int(os.environ.get("RANK", "0")) == 0:
        os.kill(os.getpid(), signal.SIGKILL)


def _init_with_kill(self, opts, callbacks=None):
    _init(self, opts, list(callbacks or []) + ([_kill] if KILL_AT else []))


trainer.Trainer.__init__ = _init_with_kill

if __name__ == "__main__":
    from maw_reranker.cli.main import main

    sys.exit(main(sys.argv[1:]))
