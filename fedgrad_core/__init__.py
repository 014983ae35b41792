"""fedgrad_core: FedGrad, the baselines it is compared with, the attacks, and one simulation loop.

from fedgrad_core import ExperimentConfig, run_experiment
result = run_experiment(ExperimentConfig(dataset="digits", defense="fedgrad", attack="blackbox"))
result.to_frame()
"""

__version__ = "0.1.0"

from fedgrad_core.config import ConfigError, ExperimentConfig  # noqa: E402
from fedgrad_core.results import RunResult  # noqa: E402
from fedgrad_core.simulation import run_experiment  # noqa: E402

__all__ = ["ConfigError", "ExperimentConfig", "RunResult", "run_experiment", "__version__"]
