// Command kubernetes_validate decodes Kubernetes manifests strictly against the API types of
// the pinned client-go (k8s.io/api): an unknown or misspelt field, a wrong type or an
// unregistered kind is an error naming the file, the document and the field path.
//
// Usage: kubernetes_validate FILE...  (multi-document YAML files are split on "---").
// It prints one line per document ("ok FILE#N KIND NAME") and exits 1 if any fails.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kubernetes_validate FILE...")
		os.Exit(2)
	}
	decoder := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	failed := false
	for _, path := range os.Args[1:] {
		data, err := os.ReadFile(path)
		if err != nil {
			fmt.Printf("error %s: %v\n", path, err)
			failed = true
			continue
		}
		reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for index := 1; ; index++ {
			document, err := reader.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				fmt.Printf("error %s#%d: %v\n", path, index, err)
				failed = true
				break
			}
			if onlyComments(document) {
				continue
			}
			object, kind, err := decoder.Decode(document, nil, nil)
			if err != nil {
				fmt.Printf("error %s#%d: %v\n", path, index, err)
				failed = true
				continue
			}
			name := ""
			if accessor, err := meta.Accessor(object); err == nil {
				name = accessor.GetName()
			}
			fmt.Printf("ok %s#%d %s %s\n", path, index, kind.Kind, name)
		}
	}
	if failed {
		os.Exit(1)
	}
}

// onlyComments reports whether a YAML document holds nothing but blank and comment lines.
func onlyComments(document []byte) bool {
	for _, line := range bytes.Split(document, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) > 0 && line[0] != '#' {
			return false
		}
	}
	return true
}
