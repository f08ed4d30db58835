"""Play real test-mode Atari episodes with an agent and write results.json.

    python evaluate.py runs/<name>                              # a trained run, its last checkpoint
    python evaluate.py --agent random --env Breakout --episodes 30
    python evaluate.py --compare runs/<a> runs/<b>       # worlds open loop on the same real data
    python evaluate.py --table runs/*                     # results aggregated beside IRIS, DIAMOND

Results go to ``<run>/results.json`` (a previous one is kept as ``results.N.json``) and the
returns plus one episode video to the run's TensorBoard. A run directory's recorded plugins are
imported only when named again with ``--plugin`` (or with ``--trust-plugins``).

``--compare`` plays fresh real test-mode episodes with a random policy, starts every run's world
from the same real contexts, steps it open loop with the same recorded actions and writes PSNR /
SSIM per horizon step, reward / end accuracy, frames/s and side-by-side videos to a new
``runs/compare-...`` directory (TensorBoard, compare.json, curves.csv, GIFs); see
``worldmodels/compare.py``. ``--table`` aggregates results.json files over games and seeds (mean,
median, IQM of the HNS with stratified bootstrap CIs, games >= human) beside the published IRIS
and DIAMOND scores on the same games and writes table.json; see ``worldmodels/aggregate.py``.
"""

import sys

from worldmodels.commands.evaluate import cli, main  # noqa: F401  (scripts and tests call main)

if __name__ == "__main__":
    sys.exit(cli())
