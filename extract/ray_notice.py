"""Ray core's error-level notice about Ray Data's actors, logged once per process, spent in silence.

Ray Data hands every actor of an actor pool its context and its function by object reference, and
lets the actor restart after a crash. For such an actor, Ray core logs (at error level, once per
process, from C++ straight to stderr) that a restart would fail if those objects were lost
(ray-project/ray#53727). Ray Data holds the references for as long as the job runs, so here the line
only alarms the user. No setting turns it off; since it is logged once per process, this module has it
logged once with stderr caught and dropped, by an actor that asks for a resource no node has and
is killed before it could ever be placed. Every other line Ray writes still shows.
"""

from __future__ import annotations

from lyrics.stderr import stderr_caught

_NOWHERE = "lyrics_nowhere"  # a custom resource no node offers: the actor below is never placed


def spend_actor_restart_notice() -> None:
    """Have Ray core log its once-per-process actor restart notice now, unseen (call after ray.init)."""
    import ray

    @ray.remote(max_restarts=1, num_cpus=0, resources={_NOWHERE: 1})
    class _Unplaced:
        def __init__(self, argument: bytes) -> None:
            self.argument = argument

    argument = ray.put(b"")  # an argument by reference, as Ray Data passes its own
    with stderr_caught():  # Ray's C++ logger writes to file descriptor 2; what it says here is dropped
        actor = _Unplaced.remote(argument)  # the notice is logged here, synchronously
    ray.kill(actor, no_restart=True)
