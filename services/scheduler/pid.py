"""A PID controller (pure): output limits, anti-windup, derivative on measurement, injected clock."""

from __future__ import annotations

import msgspec


class PidGains(msgspec.Struct, frozen=True, kw_only=True):
    kp: float
    ki: float
    kd: float
    out_min: float
    out_max: float
    bias: float = 0.0  # the output with zero error and an empty integral


class PidState(msgspec.Struct, kw_only=True):
    integral: float = 0.0
    last_y: float | None = None  # the previous measurement (derivative on measurement: no kick on setpoint steps)
    last_t: float | None = None


class PidStep(msgspec.Struct, frozen=True, kw_only=True):
    out: float
    p: float
    i: float
    d: float
    error: float


def pid_step(g: PidGains, s: PidState, setpoint: float, y: float, now: float) -> PidStep:
    """One step at time ``now`` (seconds, from the caller's clock); ``s`` is updated in place.

    error = y − setpoint, so a positive output pushes the measurement down (a plant whose
    measurement falls as the output rises, like step time against the resident share α).
    """
    err = y - setpoint
    dt = 0.0 if s.last_t is None else max(0.0, now - s.last_t)
    p = g.kp * err
    d = 0.0 if s.last_y is None or dt <= 0 else g.kd * (y - s.last_y) / dt
    candidate = s.integral + g.ki * err * dt
    unclamped = g.bias + p + candidate + d
    # anti-windup: integrate only while the output is inside its limits, or when the error
    # drives it back inside them (conditional integration), and never let the integral alone
    # exceed the output range
    if g.out_min < unclamped < g.out_max or (unclamped >= g.out_max and err < 0) or (unclamped <= g.out_min and err > 0):
        s.integral = min(max(candidate, g.out_min - g.bias), g.out_max - g.bias)
    out = min(max(g.bias + p + s.integral + d, g.out_min), g.out_max)
    s.last_y, s.last_t = y, now
    return PidStep(out=out, p=p, i=s.integral, d=d, error=err)
