"""The project's own data files (routing labels, identity facts, domain SFT sets) and their loaders."""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
