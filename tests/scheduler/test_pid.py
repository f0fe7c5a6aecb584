"""The PID controller: limits, anti-windup, derivative on measurement, an injected clock."""

from __future__ import annotations

import pytest

from c2cq.services.scheduler.pid import PidGains, PidState, pid_step

G = PidGains(kp=1.0, ki=1.0, kd=0.0, out_min=0.0, out_max=1.0)


def test_output_limits_and_terms():
    s = PidState()
    step = pid_step(G, s, setpoint=1.0, y=5.0, now=0.0)
    assert step.out == 1.0 and step.p == 4.0 and step.error == 4.0
    step = pid_step(G, s, setpoint=1.0, y=0.0, now=1.0)
    assert step.out == 0.0


def test_anti_windup_integral_stays_bounded_and_recovers_at_once():
    s = PidState()
    for t in range(100):  # saturated high for a long time
        pid_step(G, s, setpoint=1.0, y=3.0, now=float(t))
    assert s.integral <= G.out_max
    # the error reverses: the output leaves the upper limit on the next step, not after unwinding
    step = pid_step(G, s, setpoint=1.0, y=0.5, now=100.0)
    assert step.out < G.out_max


def test_derivative_on_measurement_ignores_setpoint_steps():
    g = PidGains(kp=0.0, ki=0.0, kd=1.0, out_min=-10.0, out_max=10.0)
    s = PidState()
    pid_step(g, s, setpoint=1.0, y=1.0, now=0.0)
    assert pid_step(g, s, setpoint=5.0, y=1.0, now=1.0).d == 0.0  # setpoint jumped, measurement did not
    assert pid_step(g, s, setpoint=5.0, y=3.0, now=2.0).d == pytest.approx(2.0)


def test_the_clock_is_injected():
    a, b = PidState(), PidState()
    g = PidGains(kp=0.0, ki=1.0, kd=0.0, out_min=-10.0, out_max=10.0)
    pid_step(g, a, 0.0, 1.0, now=0.0)
    pid_step(g, b, 0.0, 1.0, now=0.0)
    assert pid_step(g, a, 0.0, 1.0, now=0.5).i == pytest.approx(0.5)
    assert pid_step(g, b, 0.0, 1.0, now=2.0).i == pytest.approx(2.0)
