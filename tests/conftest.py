"""Shared pytest fixtures. Device fixtures (tracker, emulated board) live in fixtures_device.py."""

from tvmc_attend.threads import size_thread_pool

# Tests run TVM in this process (and in MetaSchedule workers it starts): size TVM's pool as
# every command does, before anything imports TVM.
size_thread_pool()

from fixtures_device import *  # noqa: E402,F401,F403
