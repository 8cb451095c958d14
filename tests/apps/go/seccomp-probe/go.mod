module example.invalid/seccompprobe

go 1.19
