//go:build tools

// Package tools pins promtool's module so `go mod tidy` keeps it.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
