// seccomp-probe: a pure-Go program (no cgo, no dependencies) that prints
// what it sees, for tests/tests/seccomp_local.rs. Go makes system calls
// without libc, so only remora's seccomp supervisor can show it the pod.
//
//	seccomp-probe env NAME | cat PATH | ls DIR | stat PATH | readlink PATH |
//	              resolve NAME | get HOST:PORT PATH | peer HOST:PORT |
//	              child PATH | on-term PATH (prints "ready", waits for
//	              SIGTERM, then prints PATH's content) |
//	              write PATH TEXT | truncate PATH N |
//	              rdwr PATH TEXT (O_RDWR: prints the size read, then the
//	              content after overwriting byte 0 with '#' and appending
//	              TEXT) | cdcat DIR FILE (chdir, read
//	              FILE relative to it, print it and the working directory) |
//	              serve ADDR LOG (HTTP: answers "answer from the laptop",
//	              appends "PATH PEER_IP" to LOG for each request) |
//	              serve-once ADDR (answers one HTTP request, closes its
//	              listener, then stays alive) |
//	              serve-file ADDR PATH (HTTP: answers with PATH's content,
//	              read at each request) |
//	              addrs HOST:PORT (TCP: prints its local and remote address
//	              and the first line the server sends) |
//	              udp HOST:PORT TEXT (an unconnected UDP socket: WriteTo,
//	              then prints "REPLY from SOURCE" of the answer) |
//	              udp-timeout, udp-mmsg, udp-signals (see udp.go)
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, "seccomp-probe:", err)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 3 {
		fail(fmt.Errorf("usage: seccomp-probe COMMAND ARG..."))
	}
	arg := os.Args[2]
	switch os.Args[1] {
	case "env":
		fmt.Println(os.Getenv(arg))
	case "cat":
		data, err := os.ReadFile(arg)
		if err != nil {
			fail(err)
		}
		os.Stdout.Write(data)
	case "ls":
		entries, err := os.ReadDir(arg)
		if err != nil {
			fail(err)
		}
		names := []string{}
		for _, e := range entries {
			names = append(names, e.Name())
		}
		sort.Strings(names)
		fmt.Println(strings.Join(names, " "))
	case "stat":
		info, err := os.Stat(arg)
		if err != nil {
			fail(err)
		}
		fmt.Println(info.Size(), info.IsDir())
	case "readlink":
		target, err := os.Readlink(arg)
		if err != nil {
			fail(err)
		}
		fmt.Println(target)
	case "resolve":
		addrs, err := net.LookupHost(arg)
		if err != nil {
			fail(err)
		}
		sort.Strings(addrs)
		fmt.Println(strings.Join(addrs, " "))
	case "get":
		conn, err := net.DialTimeout("tcp", arg, 10*time.Second)
		if err != nil {
			fail(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: probe\r\n\r\n", os.Args[3])
		reader := bufio.NewReader(conn)
		for {
			line, err := reader.ReadString('\n')
			if err != nil {
				fail(err)
			}
			if line == "\r\n" {
				break
			}
		}
		body, err := io.ReadAll(reader)
		if err != nil {
			fail(err)
		}
		os.Stdout.Write(body)
	case "addrs":
		conn, err := net.DialTimeout("tcp", arg, 10*time.Second)
		if err != nil {
			fail(err)
		}
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			fail(err)
		}
		fmt.Println(conn.LocalAddr(), conn.RemoteAddr(), strings.TrimSpace(line))
		conn.Close()
	case "udp":
		to, err := net.ResolveUDPAddr("udp", arg)
		if err != nil {
			fail(err)
		}
		conn, err := net.ListenPacket("udp", ":0")
		if err != nil {
			fail(err)
		}
		if _, err := conn.WriteTo([]byte(os.Args[3]+"\n"), to); err != nil {
			fail(err)
		}
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		buf := make([]byte, 2048)
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			fail(err)
		}
		fmt.Printf("%s from %s\n", strings.TrimSpace(string(buf[:n])), from)
	case "peer":
		conn, err := net.DialTimeout("tcp", arg, 10*time.Second)
		if err != nil {
			fail(err)
		}
		fmt.Println(conn.RemoteAddr())
		conn.Close()
	case "on-term":
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		fmt.Println("ready")
		<-term
		data, err := os.ReadFile(arg)
		if err != nil {
			fail(err)
		}
		os.Stdout.Write(data)
	case "child":
		// A child process inherits the filter: exec `cat` (dynamic) on the path.
		out, err := exec.Command("cat", arg).Output()
		if err != nil {
			fail(err)
		}
		os.Stdout.Write(out)
	case "cdcat":
		if err := os.Chdir(arg); err != nil {
			fail(err)
		}
		data, err := os.ReadFile(os.Args[3])
		if err != nil {
			fail(err)
		}
		os.Unsetenv("PWD") // Getwd must ask the kernel (getcwd), not $PWD
		wd, err := os.Getwd()
		if err != nil {
			fail(err)
		}
		fmt.Printf("%s%s\n", data, wd)
	case "write":
		if err := os.WriteFile(arg, []byte(os.Args[3]), 0o644); err != nil {
			fail(err)
		}
	case "rdwr":
		// Read-write: read it, overwrite its first byte, append a line,
		// read it all again through the same fd, sync, close.
		f, err := os.OpenFile(arg, os.O_RDWR, 0)
		if err != nil {
			fail(err)
		}
		before, err := io.ReadAll(f)
		if err != nil {
			fail(err)
		}
		if _, err := f.WriteAt([]byte("#"), 0); err != nil {
			fail(err)
		}
		if _, err := f.Write([]byte(os.Args[3])); err != nil {
			fail(err)
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			fail(err)
		}
		after, err := io.ReadAll(f)
		if err != nil {
			fail(err)
		}
		if err := f.Sync(); err != nil {
			fail(err)
		}
		if err := f.Close(); err != nil {
			fail(err)
		}
		fmt.Printf("%d\n%s", len(before), after)
	case "truncate":
		var n int64
		fmt.Sscan(os.Args[3], &n)
		if err := os.Truncate(arg, n); err != nil {
			fail(err)
		}
	case "serve":
		if len(os.Args) < 4 {
			fail(fmt.Errorf("usage: seccomp-probe serve ADDR LOG"))
		}
		log, err := os.OpenFile(os.Args[3], os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			fail(err)
		}
		handler := func(w http.ResponseWriter, r *http.Request) {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			fmt.Fprintf(log, "%s %s\n", r.URL.Path, host)
			fmt.Fprint(w, "answer from the laptop\n")
		}
		fail(http.ListenAndServe(arg, http.HandlerFunc(handler)))
	case "serve-file":
		handler := func(w http.ResponseWriter, r *http.Request) {
			data, err := os.ReadFile(os.Args[3])
			if err != nil {
				http.Error(w, err.Error(), http.StatusNotFound)
				return
			}
			w.Write(data)
		}
		fail(http.ListenAndServe(arg, http.HandlerFunc(handler)))
	case "serve-once":
		ln, err := net.Listen("tcp", arg)
		if err != nil {
			fail(err)
		}
		conn, err := ln.Accept()
		if err != nil {
			fail(err)
		}
		if _, err := http.ReadRequest(bufio.NewReader(conn)); err != nil {
			fail(err)
		}
		fmt.Fprint(conn, "HTTP/1.0 200 OK\r\nContent-Length: 23\r\n\r\nanswer from the laptop\n")
		conn.Close()
		ln.Close()
		time.Sleep(time.Hour)
	case "udp-timeout":
		udpTimeout(arg, os.Args[3])
	case "udp-mmsg":
		udpMmsg(arg, atoi(os.Args[3]))
	case "udp-signals":
		udpSignals(arg, atoi(os.Args[3]))
	default:
		fail(fmt.Errorf("unknown command %q", os.Args[1]))
	}
}

func atoi(s string) int {
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		fail(err)
	}
	return n
}
