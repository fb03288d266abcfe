// Command tls-echo is the Go crypto/tls peer of the benchmark suite
// (benchmarks/suite.py): a TLS echo server on the same certificates as the
// Python servers, with the same contract as benchmarks/servers.py.
//
//	go build -o tls-echo . && ./tls-echo -pki DIR [-mtls]
//
// DIR holds server.pem, server.key and ca.pem (the suite's development PKI).
// It listens on 127.0.0.1, an ephemeral port, prints "READY <port>" on
// stdout and serves until SIGTERM or SIGINT. With -mtls it requires a client
// certificate signed by ca.pem. Standard library only, so `go build` works
// offline.
//
// Each connection gets one goroutine: a handshake with a 10 s deadline (as
// the Python servers have), then an echo loop through a 16 KiB buffer. A TLS
// record carries at most 16 KiB of plaintext and tls.Conn.Read returns at
// most one record, so a larger buffer would only add memory per idle
// connection (what W7 measures), not speed.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

const handshakeTimeout = 10 * time.Second

func main() {
	pki := flag.String("pki", "", "folder with server.pem, server.key and ca.pem")
	mtls := flag.Bool("mtls", false, "require a client certificate signed by ca.pem")
	host := flag.String("host", "127.0.0.1", "address to listen on")
	flag.Parse()
	if *pki == "" {
		fail("-pki DIR is required")
	}
	config, err := serverConfig(*pki, *mtls)
	if err != nil {
		fail(err.Error())
	}
	listener, err := tls.Listen("tcp", net.JoinHostPort(*host, "0"), config)
	if err != nil {
		fail(fmt.Sprintf("cannot listen on %s: %v", *host, err))
	}
	fmt.Printf("READY %d\n", listener.Addr().(*net.TCPAddr).Port)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		listener.Close()
	}()
	for {
		conn, err := listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. too many open files: keep serving the others
		}
		go echo(conn.(*tls.Conn))
	}
}

func serverConfig(pki string, mtls bool) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(pki, "server.pem"), filepath.Join(pki, "server.key"))
	if err != nil {
		return nil, fmt.Errorf("server certificate in %s: %v", pki, err)
	}
	config := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if mtls {
		caFile := filepath.Join(pki, "ca.pem")
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", caFile)
		}
		config.ClientCAs = pool
		config.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return config, nil
}

func echo(conn *tls.Conn) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := conn.Handshake(); err != nil {
		return
	}
	conn.SetDeadline(time.Time{})
	buf := make([]byte, 16384)
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			if _, werr := conn.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, "tls-echo:", message)
	os.Exit(2)
}
