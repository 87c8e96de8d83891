//! Tests of the C ABI, calling the function list in-process.
