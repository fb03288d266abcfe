module trio-tls-dtls/benchmarks/go

go 1.19
