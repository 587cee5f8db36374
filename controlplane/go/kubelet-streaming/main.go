// kubelet-streaming: the kubelet's own exec and port-forward streaming code, for the mljob node agent (written by
// hand; go.mod by controlplane/gomod.py).
//
// The agent (mljob/nodeagent/streaming.py) terminates TLS, authorizes the API server's request and finds the
// container's process; then it starts this program once per request, with one end of a socket pair as its stdin,
// and writes it the client's request head with one header added, X-Mljob-Target (base64 of JSON: what to enter),
// then copies bytes both ways between that socket and the client. The request (an upgrade to SPDY/3.1, or
// WebSocket) is served by k8s.io/cri-streaming's ServeExec / ServePortForward, the code behind a CRI runtime's
// streaming server that the kubelet proxies to, so the stream protocols (channel.k8s.io v1-v4, portforward.k8s.io,
// exit codes, terminal resize) are upstream's and none of them is written here. It exits when the connection closes.
//
//	kubelet-streaming exec          X-Mljob-Target: {"nsenter": [...], "env": ["K=V", ...], "pod": "ns/name", "container": "c"}
//	kubelet-streaming port-forward  X-Mljob-Target: {"netns": "/proc/<pid>/ns/net", "pod": "ns/name"}
//
// exec runs nsenter + the request's command (its "command" query parameters), with a pty when asked (resized as
// the client's terminal is); port-forward dials 127.0.0.1:<port> from inside the pod's network namespace.
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

const (
	idleTimeout           = 4 * time.Hour // the CRI streaming server's default (streaming.DefaultConfig)
	streamCreationTimeout = remotecommand.DefaultStreamCreationTimeout
	ioGrace               = 2 * time.Second // output a command's leftover children hold open, after it exited
	dialTimeout           = 10 * time.Second
	targetHeader          = "X-Mljob-Target"
)

type spec struct {
	Nsenter   []string `json:"nsenter"`
	Env       []string `json:"env"`
	Netns     string   `json:"netns"`
	Pod       string   `json:"pod"`
	UID       string   `json:"uid"`
	Container string   `json:"container"`
}

func main() {
	if len(os.Args) != 2 || (os.Args[1] != "exec" && os.Args[1] != "port-forward") {
		fmt.Fprintln(os.Stderr, "usage: kubelet-streaming exec|port-forward  (stdin: the connection)")
		os.Exit(2)
	}
	conn, err := net.FileConn(os.Stdin)
	if err != nil {
		fatal("stdin is not a connection: %v", err)
	}
	listener := newOneConn(conn)
	serve := serveExec
	if os.Args[1] == "port-forward" {
		serve = servePortForward
	}
	handler := func(w http.ResponseWriter, r *http.Request) {
		var s spec
		raw, err := base64.StdEncoding.DecodeString(r.Header.Get(targetHeader))
		if err == nil {
			err = json.Unmarshal(raw, &s)
		}
		if err != nil {
			http.Error(w, fmt.Sprintf("no target: header %s: %v", targetHeader, err), http.StatusInternalServerError)
			return
		}
		r.Header.Del(targetHeader)
		serve(w, r, s)
	}
	server := &http.Server{Handler: http.HandlerFunc(handler), ReadHeaderTimeout: time.Minute}
	go server.Serve(listener) //nolint:errcheck // it ends with the connection
	<-listener.closed
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kubelet-streaming: "+format+"\n", args...)
	os.Exit(1)
}

func serveExec(w http.ResponseWriter, r *http.Request, s spec) {
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	command := r.URL.Query()["command"]
	if len(command) == 0 {
		http.Error(w, "no command: the query has no command parameter", http.StatusBadRequest)
		return
	}
	remotecommand.ServeExec(w, r, &executor{s}, s.Pod, s.UID, s.Container, command, opts,
		idleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func servePortForward(w http.ResponseWriter, r *http.Request, s spec) {
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	portforward.ServePortForward(w, r, &forwarder{s}, s.Pod, s.UID, opts,
		idleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

// --- exec ----------------------------------------------------------------------------------------------------

type executor struct{ spec spec }

// ExecInContainer runs nsenter + cmd; a non-zero exit (128 + N for signal N) becomes the stream's exit code.
func (e *executor) ExecInContainer(_ context.Context, _, _, _ string, cmd []string, in io.Reader, out, errOut io.WriteCloser,
	tty bool, resize <-chan remotecommand.TerminalSize, _ time.Duration) error {
	argv := append(append([]string{}, e.spec.Nsenter...), cmd...)
	c := exec.Command(argv[0], argv[1:]...)
	c.Env = e.spec.Env
	var err error
	if tty {
		err = runTTY(c, in, out, resize)
	} else {
		err = runPipes(c, in, out, errOut)
	}
	return exitError(err)
}

func runPipes(c *exec.Cmd, in io.Reader, out, errOut io.Writer) error {
	if out != nil {
		c.Stdout = out
	}
	if errOut != nil {
		c.Stderr = errOut
	}
	c.WaitDelay = ioGrace
	var stdin io.WriteCloser
	if in != nil {
		pipe, err := c.StdinPipe() // closed by Wait: a client that keeps stdin open does not hold the exit back
		if err != nil {
			return err
		}
		stdin = pipe
	}
	if err := c.Start(); err != nil {
		return err
	}
	if stdin != nil {
		go func() {
			io.Copy(stdin, in) //nolint:errcheck // the command may exit before reading it all
			stdin.Close()
		}()
	}
	err := c.Wait()
	if errors.Is(err, exec.ErrWaitDelay) {
		return nil // exited 0; a child it left behind still held the output
	}
	return err
}

func runTTY(c *exec.Cmd, in io.Reader, out io.Writer, resize <-chan remotecommand.TerminalSize) error {
	if !hasVar(c.Env, "TERM") {
		c.Env = append(c.Env, "TERM=xterm") // as container runtimes set it for a tty
	}
	terminal, err := pty.Start(c) // the command's session and controlling terminal
	if err != nil {
		return err
	}
	defer terminal.Close()
	if resize != nil {
		go func() {
			for size := range resize {
				pty.Setsize(terminal, &pty.Winsize{Rows: size.Height, Cols: size.Width}) //nolint:errcheck
			}
		}()
	}
	if in != nil {
		go io.Copy(terminal, in) //nolint:errcheck
	}
	copied := make(chan struct{})
	go func() {
		if out != nil {
			io.Copy(out, terminal) //nolint:errcheck // ends with EIO once no process holds the terminal
		}
		close(copied)
	}()
	err = c.Wait()
	select {
	case <-copied:
	case <-time.After(ioGrace):
	}
	return err
}

func hasVar(env []string, name string) bool {
	for _, kv := range env {
		if len(kv) > len(name) && kv[:len(name)+1] == name+"=" {
			return true
		}
	}
	return false
}

// exitError turns a finished command's status into what ServeExec reports as the exit code.
func exitError(err error) error {
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) {
		return err
	}
	status, ok := exitErr.Sys().(syscall.WaitStatus)
	if ok && status.Signaled() {
		return utilexec.CodeExitError{Err: err, Code: 128 + int(status.Signal())}
	}
	return utilexec.CodeExitError{Err: err, Code: exitErr.ExitCode()}
}

// --- port-forward --------------------------------------------------------------------------------------------

type forwarder struct{ spec spec }

// PortForward copies between the stream and 127.0.0.1:port in the pod's network namespace, as CRI runtimes do.
func (f *forwarder) PortForward(_ context.Context, _, _ string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	conn, err := dialIn(f.spec.Netns, fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return fmt.Errorf("pod %s: connecting to 127.0.0.1:%d in its network namespace: %w", f.spec.Pod, port, err)
	}
	defer conn.Close()
	go func() {
		io.Copy(conn, stream) //nolint:errcheck
		if tcp, ok := conn.(*net.TCPConn); ok {
			tcp.CloseWrite() //nolint:errcheck // the client is done sending: the server sees EOF
		}
	}()
	io.Copy(stream, conn) //nolint:errcheck
	return nil
}

// dialIn connects from inside the network namespace at path (the host's when empty). A socket keeps the namespace
// it was made in, so only the dial runs on a thread that entered it; the thread goes back to the host's namespace
// after, or ends with its goroutine if it cannot.
func dialIn(path, address string) (net.Conn, error) {
	if path == "" {
		return net.DialTimeout("tcp4", address, dialTimeout)
	}
	type result struct {
		conn net.Conn
		err  error
	}
	got := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		own, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			got <- result{nil, err}
			return
		}
		defer own.Close()
		target, err := os.Open(path)
		if err != nil {
			got <- result{nil, err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			got <- result{nil, fmt.Errorf("entering %s: %w", path, err)}
			return
		}
		conn, err := net.DialTimeout("tcp4", address, dialTimeout)
		if unix.Setns(int(own.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		got <- result{conn, err}
	}()
	r := <-got
	return r.conn, r.err
}

// --- one connection, served once ------------------------------------------------------------------------------

// oneConn is a net.Listener that hands out one connection, then blocks until that connection is closed (by the
// HTTP server, or by the stream code that hijacked it); closed tells main to exit.
type oneConn struct {
	conn   net.Conn
	once   sync.Once
	closed chan struct{}
}

type trackedConn struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.closed) })
	return err
}

func newOneConn(conn net.Conn) *oneConn {
	closed := make(chan struct{})
	return &oneConn{conn: &trackedConn{Conn: conn, closed: closed}, closed: closed}
}

func (l *oneConn) Accept() (net.Conn, error) {
	var c net.Conn
	l.once.Do(func() { c = l.conn })
	if c != nil {
		return c, nil
	}
	<-l.closed
	return nil, net.ErrClosed
}

func (l *oneConn) Close() error   { return nil }
func (l *oneConn) Addr() net.Addr { return l.conn.LocalAddr() }
