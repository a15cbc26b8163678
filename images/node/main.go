// node-probe: the one binary of the real node's images (see ../node-images.sh).
//
//	node-probe              wait until SIGTERM or SIGINT, then exit 0 (the pod sandbox's "pause")
//	node-probe echo WORD... print the words on one line to stdout, then exit 0
//	node-probe cat FILE...  copy the files to stdout, then exit 0 (1 if one cannot be read)
//
// Static (no cgo) so the images need nothing else: no libc, no shell.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	args := os.Args[1:]
	if len(args) == 0 {
		// PID 1 ignores signals it has no handler for, so catch the ones a runtime sends.
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
		return
	}
	switch args[0] {
	case "echo":
		fmt.Println(strings.Join(args[1:], " "))
	case "cat":
		for _, file := range args[1:] {
			data, err := os.ReadFile(file)
			if err != nil {
				fmt.Fprintf(os.Stderr, "node-probe: %v\n", err)
				os.Exit(1)
			}
			os.Stdout.Write(data)
		}
	default:
		fmt.Fprintf(os.Stderr, "node-probe: unknown command %q (want no argument, echo WORD... or cat FILE...)\n", args[0])
		os.Exit(2)
	}
}
