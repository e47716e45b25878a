// Command noop-extender is bench_scheduling's floor: a kube-scheduler extender that does no
// work of its own. It speaks the same protocol over the same mutual TLS as gpuscale's
// extender (filter, prioritize, bind; nodeCacheCapable), passes every node, scores each 0 and
// binds with one Binding call, so the benchmark can tell what the extender protocol itself
// costs kube-scheduler on this machine from what gpuscale's extender adds to it.
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
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
)

type pod struct {
	Metadata struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
		UID       string `json:"uid"`
	} `json:"metadata"`
}

type extenderArgs struct {
	Pod       pod
	NodeNames []string
}

type filterResult struct {
	NodeNames                  []string
	Nodes                      any
	FailedNodes                map[string]string
	FailedAndUnresolvableNodes map[string]string
	Error                      string
}

type hostPriority struct {
	Host  string
	Score int64
}

type bindingArgs struct {
	PodName      string
	PodNamespace string
	PodUID       string
	Node         string
}

type bindingResult struct {
	Error string
}

func main() {
	addr := flag.String("address", "127.0.0.1:8888", "verbs listener (mutual TLS)")
	ops := flag.String("ops-address", "127.0.0.1:0", "plain listener for /readyz")
	cert := flag.String("tls-cert-file", "", "serving certificate")
	key := flag.String("tls-private-key-file", "", "serving key")
	clientCA := flag.String("client-ca-file", "", "CA of kube-scheduler's client certificate")
	server := flag.String("server", "", "the API server's URL")
	apiCA := flag.String("api-ca-file", "", "the API server's CA")
	tokenFile := flag.String("token-file", "", "bearer token for Binding calls")
	http1 := flag.Bool("http1", false, "serve HTTP/1.1 only, as gpuscale's extender does (Go's "+
		"server otherwise offers h2, and kube-scheduler's client then sends every call on one "+
		"connection)")
	flag.Parse()

	token, err := os.ReadFile(*tokenFile)
	if err != nil {
		log.Fatal(err)
	}
	api := &http.Client{Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool(*apiCA)},
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 64,
	}}
	bearer := "Bearer " + strings.TrimSpace(string(token))

	mux := http.NewServeMux()
	mux.HandleFunc("POST /filter", func(w http.ResponseWriter, r *http.Request) {
		var args extenderArgs
		if !decode(w, r, &args) {
			return
		}
		reply(w, filterResult{NodeNames: args.NodeNames})
	})
	mux.HandleFunc("POST /prioritize", func(w http.ResponseWriter, r *http.Request) {
		var args extenderArgs
		if !decode(w, r, &args) {
			return
		}
		scores := make([]hostPriority, len(args.NodeNames))
		for i, n := range args.NodeNames {
			scores[i] = hostPriority{Host: n}
		}
		reply(w, scores)
	})
	mux.HandleFunc("POST /bind", func(w http.ResponseWriter, r *http.Request) {
		var args bindingArgs
		if !decode(w, r, &args) {
			return
		}
		reply(w, bindingResult{Error: bind(api, *server, bearer, args)})
	})
	var accepted atomic.Int64
	go func() {
		ready := http.NewServeMux()
		ready.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
		// The one figure bench_scheduling reads beside gpuscale's own: connections opened to
		// the verbs listener (each a TLS handshake), in the same metric name and label.
		ready.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintf(w, "# TYPE gpuscale_connections_accepted_total counter\n"+
				"gpuscale_connections_accepted_total{listener=\"verbs\"} %d\n", accepted.Load())
		})
		log.Fatal(http.ListenAndServe(*ops, ready))
	}()
	verbs := &http.Server{
		Addr:    *addr,
		Handler: mux,
		ConnState: func(_ net.Conn, state http.ConnState) {
			if state == http.StateNew {
				accepted.Add(1)
			}
		},
		TLSConfig: &tls.Config{
			ClientAuth: tls.RequireAndVerifyClientCert,
			ClientCAs:  pool(*clientCA),
		},
	}
	if *http1 {
		verbs.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
	log.Fatal(verbs.ListenAndServeTLS(*cert, *key))
}

func bind(api *http.Client, server, bearer string, a bindingArgs) string {
	body, _ := json.Marshal(map[string]any{
		"apiVersion": "v1",
		"kind":       "Binding",
		"metadata":   map[string]any{"name": a.PodName, "namespace": a.PodNamespace, "uid": a.PodUID},
		"target":     map[string]any{"apiVersion": "v1", "kind": "Node", "name": a.Node},
	})
	url := fmt.Sprintf("%s/api/v1/namespaces/%s/pods/%s/binding", server, a.PodNamespace, a.PodName)
	req, err := http.NewRequest("POST", url, bytes.NewReader(body))
	if err != nil {
		return err.Error()
	}
	req.Header.Set("Authorization", bearer)
	req.Header.Set("Content-Type", "application/json")
	resp, err := api.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Sprintf("HTTP %d: %s", resp.StatusCode, msg)
	}
	return ""
}

func decode(w http.ResponseWriter, r *http.Request, into any) bool {
	if err := json.NewDecoder(r.Body).Decode(into); err != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(bindingResult{Error: err.Error()})
		return false
	}
	return true
}

func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func pool(path string) *x509.CertPool {
	pem, err := os.ReadFile(path)
	if err != nil {
		log.Fatal(err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		log.Fatalf("%s: no certificates", path)
	}
	return p
}
