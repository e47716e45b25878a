//go:build tools

// Package tools pins the kwok release whose fake nodes the end-to-end tests run.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
