// Receives on unconnected UDP sockets, for tests/tests/seccomp_sockets_local.rs:
//
//	udp-timeout DEAD_ADDR LIVE_ADDR: a datagram to DEAD_ADDR (nothing
//	    answers), ReadFrom with a 1 s deadline (Go's netpoller), then the
//	    same with a blocking socket of the syscall package and SO_RCVTIMEO
//	    1 s; each prints "timed out: ..."; then one to LIVE_ADDR and its
//	    answer "REPLY from SOURCE".
//	udp-mmsg ADDR N: N datagrams "m0".."m<N-1>" from a blocking socket,
//	    then ONE recvmmsg(2) of N messages, as golang.org/x/net's ReadBatch
//	    makes it: prints "one call: K" and the replies with their sources,
//	    sorted.
//	udp-signals ADDR N: N request/reply rounds (WriteTo, ReadFrom with a
//	    5 s deadline) on a goroutine locked to its thread, which another
//	    goroutine sends SIGUSR1 every 100 µs, at most 50 times per round
//	    (then it waits for the next round: a notified call that cannot
//	    finish between two signals would be restarted for ever on a
//	    loaded machine): prints "replies R of N".
package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// Ends a program that would hang (a receive that never returns).
func watchdog() {
	time.AfterFunc(100*time.Second, func() {
		fmt.Fprintln(os.Stderr, "seccomp-probe: watchdog: still running after 100 s")
		os.Exit(3)
	})
}

func sockaddr4(addr string) *syscall.SockaddrInet4 {
	a, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		fail(err)
	}
	sa := &syscall.SockaddrInet4{Port: a.Port}
	copy(sa.Addr[:], a.IP.To4())
	return sa
}

func trimmed(b []byte) string { return strings.TrimSpace(string(b)) }

func udpTimeout(dead, live string) {
	watchdog()
	conn, err := net.ListenPacket("udp4", ":0")
	if err != nil {
		fail(err)
	}
	deadAddr, _ := net.ResolveUDPAddr("udp4", dead)
	if _, err := conn.WriteTo([]byte("anyone?\n"), deadAddr); err != nil {
		fail(err)
	}
	conn.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 2048)
	if n, from, err := conn.ReadFrom(buf); err == nil {
		fail(fmt.Errorf("unexpected answer %q from %s", buf[:n], from))
	} else if !errors.Is(err, os.ErrDeadlineExceeded) {
		fail(err)
	}
	fmt.Println("timed out: deadline")
	// A blocking socket with SO_RCVTIMEO, as C programs use.
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, 0)
	if err != nil {
		fail(err)
	}
	tv := syscall.Timeval{Sec: 1}
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		fail(err)
	}
	if err := syscall.Sendto(fd, []byte("anyone?\n"), 0, sockaddr4(dead)); err != nil {
		fail(err)
	}
	if n, _, err := syscall.Recvfrom(fd, buf, 0); err == nil {
		fail(fmt.Errorf("unexpected answer %q", buf[:n]))
	} else {
		fmt.Println("timed out:", err)
	}
	if err := syscall.Sendto(fd, []byte("ping\n"), 0, sockaddr4(live)); err != nil {
		fail(err)
	}
	n, from, err := syscall.Recvfrom(fd, buf, 0)
	if err != nil {
		fail(err)
	}
	f := from.(*syscall.SockaddrInet4)
	fmt.Printf("%s from %s:%d\n", trimmed(buf[:n]), net.IP(f.Addr[:]), f.Port)
}

// struct mmsghdr on linux/amd64.
type mmsghdr struct {
	hdr syscall.Msghdr
	len uint32
	_   [4]byte
}

func udpMmsg(addr string, n int) {
	watchdog()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, 0)
	if err != nil {
		fail(err)
	}
	to := sockaddr4(addr)
	for i := 0; i < n; i++ {
		if err := syscall.Sendto(fd, []byte(fmt.Sprintf("m%d\n", i)), 0, to); err != nil {
			fail(err)
		}
	}
	msgs := make([]mmsghdr, n)
	bufs := make([][128]byte, n)
	iovs := make([]syscall.Iovec, n)
	names := make([]syscall.RawSockaddrInet4, n)
	for i := range msgs {
		iovs[i].Base = &bufs[i][0]
		iovs[i].SetLen(len(bufs[i]))
		msgs[i].hdr.Iov = &iovs[i]
		msgs[i].hdr.Iovlen = 1
		msgs[i].hdr.Name = (*byte)(unsafe.Pointer(&names[i]))
		msgs[i].hdr.Namelen = uint32(unsafe.Sizeof(names[i]))
	}
	got, _, errno := syscall.Syscall6(syscall.SYS_RECVMMSG, uintptr(fd),
		uintptr(unsafe.Pointer(&msgs[0])), uintptr(n), 0, 0, 0)
	runtime.KeepAlive(bufs)
	runtime.KeepAlive(iovs)
	runtime.KeepAlive(names)
	if errno != 0 {
		fail(errno)
	}
	fmt.Println("one call:", got)
	var lines []string
	for i := 0; i < int(got); i++ {
		port := int(names[i].Port>>8 | names[i].Port<<8)
		lines = append(lines, fmt.Sprintf("%s from %s:%d",
			trimmed(bufs[i][:msgs[i].len]), net.IP(names[i].Addr[:]), port))
	}
	sort.Strings(lines)
	fmt.Println(strings.Join(lines, "\n"))
}

func udpSignals(addr string, n int) {
	watchdog()
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for range usr1 {
		}
	}()
	to, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		fail(err)
	}
	tid := make(chan int)
	done := make(chan int)
	var round int64 // rounds finished, for the signaller's pause
	go func() {
		runtime.LockOSThread()
		tid <- syscall.Gettid()
		conn, err := net.ListenPacket("udp4", ":0")
		if err != nil {
			fail(err)
		}
		replies := 0
		buf := make([]byte, 2048)
		for i := 0; i < n; i++ {
			if _, err := conn.WriteTo([]byte(fmt.Sprintf("s%d\n", i)), to); err != nil {
				fail(err)
			}
			want := fmt.Sprintf("pod got s%d", i)
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			for {
				k, _, err := conn.ReadFrom(buf)
				if err != nil {
					break // this reply is lost
				}
				if trimmed(buf[:k]) == want {
					replies++
					break
				}
			}
			atomic.AddInt64(&round, 1)
		}
		done <- replies
	}()
	t := <-tid
	pid := os.Getpid()
	seen, sent := int64(0), 0
	for {
		select {
		case replies := <-done:
			fmt.Printf("replies %d of %d\n", replies, n)
			return
		default:
			if now := atomic.LoadInt64(&round); now != seen {
				seen, sent = now, 0
			}
			if sent < 50 {
				syscall.Tgkill(pid, t, syscall.SIGUSR1)
				sent++
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
}
