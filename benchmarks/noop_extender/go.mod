module gpuscale.io/benchmarks/noop-extender

go 1.26
