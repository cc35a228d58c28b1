"""Scale-out on Redis: many workers, on one or many machines, share one account's limits,
one work queue and one job journal (the `redis` extra: `pip install 'captchaflow[redis]'`).
"""
