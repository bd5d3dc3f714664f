"""The demo corpus builder; the implementation and its design notes live in :mod:`ncdetect.data.demo`."""

from .demo import DEMO_KEYS, QUICK_PROMPTS, build_demo_corpus, check_requirements

__all__ = ["DEMO_KEYS", "QUICK_PROMPTS", "build_demo_corpus", "check_requirements"]
