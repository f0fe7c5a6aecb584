"""The discrete-event simulator (`c2cq sim`): the real scheduler core and two baselines over
simulated GPU slices in virtual time."""
