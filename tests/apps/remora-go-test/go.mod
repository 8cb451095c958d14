module example.invalid/remoragotest

go 1.19
