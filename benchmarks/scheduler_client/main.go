// Command scheduler-client is bench_extender's stand-in for kube-scheduler's extender client:
// Go's net/http over mutual TLS with the transport defaults kube-scheduler uses (two idle
// connections a host), sending what one scheduling cycle sends: filter over a node-name window,
// then prioritize over the names that passed. It prints one JSON line: the pair's latency
// percentiles and, given the server's pid, the server's CPU per pair (from /proc).
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

type args struct {
	Pod       json.RawMessage
	NodeNames *[]string
}

type filterResult struct {
	NodeNames *[]string
	Error     string
}

type hostPriority struct {
	Host  string
	Score int64
}

func main() {
	url := flag.String("url", "", "the extender's URL")
	cert := flag.String("cert", "", "client certificate")
	key := flag.String("key", "", "client key")
	ca := flag.String("ca", "", "the CA of the extender's serving certificate")
	namesFile := flag.String("names", "", "JSON list of node names (the window filter gets)")
	podFile := flag.String("pod", "", "the pod, as JSON")
	n := flag.Int("n", 1000, "pairs measured (after 50 unmeasured)")
	pid := flag.Int("pid", 0, "the server's pid: its CPU per pair is reported")
	churn := flag.Int("churn", 0, "drop the idle connections every N pairs (0: never), so that "+
		"one pair in N opens a new connection, as kube-scheduler's binds make it do")
	flag.Parse()

	pem, err := os.ReadFile(*ca)
	check(err)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		log.Fatalf("%s: no certificate", *ca)
	}
	pair, err := tls.LoadX509KeyPair(*cert, *key)
	check(err)
	transport := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}},
	}
	client := &http.Client{Transport: transport}
	var names []string
	raw, err := os.ReadFile(*namesFile)
	check(err)
	check(json.Unmarshal(raw, &names))
	pod, err := os.ReadFile(*podFile)
	check(err)

	post := func(verb string, body any, out any) {
		data, err := json.Marshal(body)
		check(err)
		resp, err := client.Post(*url+"/"+verb, "application/json", bytes.NewReader(data))
		check(err)
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			msg, _ := io.ReadAll(resp.Body)
			log.Fatalf("%s: HTTP %d: %s", verb, resp.StatusCode, msg)
		}
		check(json.NewDecoder(resp.Body).Decode(out))
	}
	var latencies []float64
	var cpu0 float64
	const warmup = 50
	for i := 0; i < warmup+*n; i++ {
		if i == warmup && *pid > 0 {
			cpu0 = cpuSeconds(*pid)
		}
		if *churn > 0 && i%*churn == 0 {
			transport.CloseIdleConnections()
		}
		start := time.Now()
		var filtered filterResult
		post("filter", args{pod, &names}, &filtered)
		if filtered.Error != "" || filtered.NodeNames == nil {
			log.Fatalf("filter: %q", filtered.Error)
		}
		var scores []hostPriority
		post("prioritize", args{pod, filtered.NodeNames}, &scores)
		if i >= warmup {
			latencies = append(latencies, float64(time.Since(start).Microseconds())/1000)
		}
	}
	sort.Float64s(latencies)
	out := map[string]any{
		"pairs":  *n,
		"p50_ms": latencies[len(latencies)/2],
		"p99_ms": latencies[len(latencies)*99/100],
	}
	if *pid > 0 {
		out["server_cpu_ms_per_pair"] = (cpuSeconds(*pid) - cpu0) * 1000 / float64(*n)
	}
	check(json.NewEncoder(os.Stdout).Encode(out))
}

// cpuSeconds is a process's user + system CPU time, from /proc/PID/stat (clock ticks of 1/100 s).
func cpuSeconds(pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	check(err)
	s := string(raw)
	fields := strings.Fields(s[strings.LastIndex(s, ")")+2:])
	user, err := strconv.ParseFloat(fields[11], 64)
	check(err)
	system, err := strconv.ParseFloat(fields[12], 64)
	check(err)
	return (user + system) / 100
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
