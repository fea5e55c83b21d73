"""The generator entry point users know (DESIGN.md §9); the code lives in app.generator.

    python3 app/utils/test_behavior_generator.py localhost:9092 ecommerce_events [--sessions N ...]

Importable too: generate_power_user_session(user_id, session_id, base_time) and siblings.
"""
import sys
from pathlib import Path

try:
    import app.generator  # noqa: F401
except ImportError:  # run as a script from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app.generator.behaviors import (  # noqa: E402
    SESSION_BUILDERS,
    generate_bouncer_session,
    generate_browser_session,
    generate_engaged_shopper_session,
    generate_power_user_session,
)
from app.generator.cli import main  # noqa: E402

__all__ = ["SESSION_BUILDERS", "generate_bouncer_session", "generate_browser_session",
           "generate_engaged_shopper_session", "generate_power_user_session", "main"]

if __name__ == "__main__":
    sys.exit(main())
