"""Pure decision cores: stdlib (and pydantic models) only; anything time-dependent takes `now`."""
