// node-probe: the one binary of the real node's images (see ../node-images.sh).
//
//	node-probe              wait until SIGTERM or SIGINT, then exit 0 (the pod sandbox's "pause")
//	node-probe echo WORD... print the words on one line to stdout, then exit 0
//	node-probe cat FILE...  copy the files to stdout, then exit 0 (1 if one cannot be read)
//	node-probe mount-tmpfs DIR  mount a tmpfs on DIR (created), print "mounted DIR", then exit 0
//	node-probe ls DIR       print "NAME TYPE" per entry of DIR (sorted; TYPE is dir, file,
//	                        socket, symlink or other), then exit 0 (1 if DIR cannot be read)
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
	case "mount-tmpfs":
		if len(args) != 2 {
			fmt.Fprintln(os.Stderr, "node-probe: mount-tmpfs wants one directory")
			os.Exit(2)
		}
		if err := os.MkdirAll(args[1], 0o755); err != nil {
			fmt.Fprintf(os.Stderr, "node-probe: %v\n", err)
			os.Exit(1)
		}
		if err := syscall.Mount("tmpfs", args[1], "tmpfs", 0, "size=1m"); err != nil {
			fmt.Fprintf(os.Stderr, "node-probe: mounting tmpfs on %s: %v\n", args[1], err)
			os.Exit(1)
		}
		fmt.Println("mounted", args[1])
	case "ls":
		if len(args) != 2 {
			fmt.Fprintln(os.Stderr, "node-probe: ls wants one directory")
			os.Exit(2)
		}
		entries, err := os.ReadDir(args[1])
		if err != nil {
			fmt.Fprintf(os.Stderr, "node-probe: %v\n", err)
			os.Exit(1)
		}
		for _, entry := range entries {
			fmt.Println(entry.Name(), fileType(entry.Type()))
		}
	default:
		fmt.Fprintf(os.Stderr, "node-probe: unknown command %q (want no argument, echo WORD..., cat FILE..., mount-tmpfs DIR or ls DIR)\n", args[0])
		os.Exit(2)
	}
}

// fileType names a directory entry's type the way the tests match it.
func fileType(mode os.FileMode) string {
	switch {
	case mode.IsDir():
		return "dir"
	case mode.IsRegular():
		return "file"
	case mode&os.ModeSocket != 0:
		return "socket"
	case mode&os.ModeSymlink != 0:
		return "symlink"
	default:
		return "other"
	}
}
