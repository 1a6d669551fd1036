//go:build tools

// Package tools pins etcd. Its main package sits at the server module root and the module
// uses relative replaces, so it can only be built as a dependency of a wrapper module.
package tools

import _ "go.etcd.io/etcd/server/v3"
