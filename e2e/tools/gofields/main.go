// Command gofields prints, as JSON, the Go field names and kinds of the Kubernetes
// types spire-controller-manager exposes to its templates (ObjectMeta, PodSpec,
// NodeSpec) and of every struct reachable from them. spire-operator renders the same
// templates from JSON objects, so it needs the JSON-name -> Go-name mapping (uid ->
// UID, serviceAccount -> DeprecatedServiceAccount, ...) and each field's zero value.
//
//	go run . > ../../../operator/src/template/go_fields.json
package main

import (
	"encoding/json"
	"os"
	"reflect"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Field is one JSON-visible field of a Go struct.
type Field struct {
	JSON string `json:"json"`
	Go   string `json:"go"`
	// Kind of the field's zero value in a template: string, bool, int, uint, float,
	// nil (pointer, interface), slice, map, struct, or scalar (a type that marshals to
	// a JSON string: time, quantity, int-or-string).
	Kind string `json:"kind"`
	// For struct, and for pointers, slices and maps of structs: the struct's type name.
	Type string `json:"type,omitempty"`
}

// Output is the whole table.
type Output struct {
	Roots map[string]string  `json:"roots"`
	Types map[string][]Field `json:"types"`
}

var scalars = map[reflect.Type]bool{
	reflect.TypeOf(metav1.Time{}):        true,
	reflect.TypeOf(metav1.MicroTime{}):   true,
	reflect.TypeOf(metav1.Duration{}):    true,
	reflect.TypeOf(resource.Quantity{}):  true,
	reflect.TypeOf(intstr.IntOrString{}): true,
}

func typeName(t reflect.Type) string {
	return t.PkgPath()[strings.LastIndex(t.PkgPath(), "/")+1:] + "." + t.Name()
}

func main() {
	out := Output{Roots: map[string]string{}, Types: map[string][]Field{}}
	for name, t := range map[string]reflect.Type{
		"PodMeta":  reflect.TypeOf(metav1.ObjectMeta{}),
		"PodSpec":  reflect.TypeOf(corev1.PodSpec{}),
		"NodeMeta": reflect.TypeOf(metav1.ObjectMeta{}),
		"NodeSpec": reflect.TypeOf(corev1.NodeSpec{}),
	} {
		out.Roots[name] = typeName(t)
		walk(t, out.Types)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	if err := enc.Encode(out); err != nil {
		panic(err)
	}
}

// structOf returns the struct type behind pointers, slices and maps, if any.
func structOf(t reflect.Type) (reflect.Type, bool) {
	for t.Kind() == reflect.Ptr || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
		t = t.Elem()
	}
	return t, t.Kind() == reflect.Struct && !scalars[t]
}

func walk(t reflect.Type, types map[string][]Field) {
	name := typeName(t)
	if _, seen := types[name]; seen {
		return
	}
	types[name] = nil   // mark before recursing: types can be recursive
	fields := []Field{} // never null in the JSON, also for types without JSON fields
	collect(t, &fields, types)
	sort.Slice(fields, func(i, j int) bool { return fields[i].JSON < fields[j].JSON })
	types[name] = fields
}

func collect(t reflect.Type, fields *[]Field, types map[string][]Field) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := strings.Split(f.Tag.Get("json"), ",")
		if tag[0] == "-" {
			continue
		}
		if f.Anonymous || (len(tag) > 1 && tag[1] == "inline" && tag[0] == "") {
			// Embedded structs' fields appear at this level in JSON; in templates they are
			// reachable both directly and through the embedded type's name.
			collect(f.Type, fields, types)
			continue
		}
		jsonName := tag[0]
		if jsonName == "" {
			jsonName = f.Name
		}
		field := Field{JSON: jsonName, Go: f.Name, Kind: kind(f.Type)}
		if st, ok := structOf(f.Type); ok {
			field.Type = typeName(st)
			walk(st, types)
		}
		*fields = append(*fields, field)
	}
}

func kind(t reflect.Type) string {
	if scalars[t] {
		return "scalar"
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "bool"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "int"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "uint"
	case reflect.Float32, reflect.Float64:
		return "float"
	case reflect.Ptr, reflect.Interface:
		return "nil"
	case reflect.Slice:
		return "slice"
	case reflect.Map:
		return "map"
	case reflect.Struct:
		return "struct"
	}
	panic("unhandled kind " + t.Kind().String())
}
