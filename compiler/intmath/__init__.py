"""NumPy reference of every integer operation the compiler emits: the oracle for bit-exact tests."""
