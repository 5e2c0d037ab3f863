"""Schedules for the int8 kernels: tensor intrinsics (VNNI, AVX-VNNI, SDOT/UDOT, I8MM), default schedules,
MetaSchedule tuning and its database.

Not built yet: the foundation compiles with TVM's default lowering and no schedule (slow: see the README's
latency figures). The tuned-kernels issue fills this package.
"""
