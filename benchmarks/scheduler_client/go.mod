module gpuscale.io/benchmarks/scheduler-client

go 1.26
