// Command leengine-cni is the CNI plugin a container runtime execs for every pod: a thin forwarder to the node's
// long-lived CNI agent (leengine/cni_agent_server.py), compiled so that an exec costs a Go start (~1-2 ms of CPU)
// instead of a Python start (~12 ms): libcni execs the plugin once per ADD and DEL (and once more for VERSION).
//
// It is a port of leengine/cni_plugin.py (the Python plugin, which stays the fallback where no Go toolchain exists)
// and must behave exactly like it: tests/unit/test_cni_plugin.py, tests/unit/test_cni_hostile.py and the libcni
// integration tests run both. Read that module's docstring for the protocol and the rules; in short:
//
//   - VERSION is answered here with the supported versions; everything else is forwarded, one connection per
//     invocation: {"env": {only the CNI_* variables}, "stdin": "<network configuration>"}\n (ASCII-only JSON, the
//     bytes Python's json.dumps(ensure_ascii=True) would write), and the agent answers "<exit code>\n<stdout>".
//   - socket: $LEENGINE_CNI_SOCKET, else the configuration's agentSocket, else /run/leengine/cni.sock; deadline:
//     $LEENGINE_CNI_TIMEOUT, else agentTimeout, else 30 s, in (0, 300] (else error 4 naming the variable or 7
//     naming the field); stdin at most 1 MiB (7), CNI_* variables at most 64 KiB (4), a socket path fits sun_path.
//   - unreachable agent: 11 (50 for STATUS); garbage answer: 5; any argument: one stderr line, exit status 2.
//
// Strings are handled as Python does: environment values are decoded as UTF-8 with surrogateescape, JSON is read
// as Python's json reads it (NaN/Infinity, duplicate keys, \u escapes incl. lone surrogates, integers of at most
// 4,300 digits, nesting bounded like the interpreter's recursion limit), and values echoed in an error's details are
// Python repr()s. So text is []rune here (a rune may be a lone surrogate, which Go's string conversion would lose).
//
// The supported versions are not written in this file: the build passes leengine/cni_plugin.py's
// SUPPORTED_VERSIONS (scripts/build-cni-plugin.sh, -ldflags -X), so the two plugins cannot drift.
// Standard library only; built static (CGO_ENABLED=0), offline, in GOPATH mode like build/cnitool.
package main

import (
	"errors"
	"io"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"
)

// supportedVersions is set at build time from cni_plugin.SUPPORTED_VERSIONS, comma-separated.
var supportedVersions string

const (
	defaultSocket  = "/run/leengine/cni.sock"
	defaultTimeout = 30.0
	connectTimeout = 2.0 // a live agent accepts at once; a full backlog must not hang the runtime
	maxAnswer      = 16 << 20
	maxStdin       = 1 << 20 // == cni_plugin.MAX_STDIN (a test checks the behaviour at the bound)
	maxEnv         = 64 << 10
	timeoutMax     = 300.0
	sunPathMax     = 107

	invalidEnv         = 4
	ioFailure          = 5
	decodeFailure      = 6
	invalidConfig      = 7
	tryAgainLater      = 11
	pluginNotAvailable = 50
	usageError         = 2

	// Python's C JSON scanner gives up (RecursionError) past the interpreter's recursion limit, and the Python
	// plugin then treats the text as "not JSON". The limit counts the plugin's own frames, so it is one level less
	// where the plugin reads the configuration's cniVersion (one call deeper) than where it reads agentSocket.
	// Measured with CPython 3.11 (Debian's 3.11.2 and the venv's 3.11.7) running the installed plugin (-IS):
	// objects and arrays nested 993 deep give agentSocket, 994 do not; 992 and 993 for cniVersion. The agent
	// refuses anything nested over 64 levels anyway (error 6).
	settingsNesting = 993
	versionNesting  = 992
	// int() of more than 4,300 digits raises ValueError (sys.int_info.default_max_str_digits): "not JSON" too.
	maxIntDigits = 4300
)

var commands = []string{"ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"}

type refused struct {
	code    int
	msg     string
	details []rune
}

type unreachable struct{ reason string }

func (u *unreachable) Error() string { return u.reason }

func main() {
	os.Exit(run())
}

func run() int {
	if len(os.Args) > 1 { // a person at a shell, not a runtime: runtimes pass no arguments (CNI spec)
		os.Stderr.WriteString("leengine-cni: error: takes no arguments: the container runtime runs it with CNI_* " +
			"variables and the network configuration on stdin (docs/cni.md)\n")
		return usageError
	}
	versions := strings.Split(supportedVersions, ",")
	if supportedVersions == "" {
		os.Stderr.WriteString("leengine-cni: built without its supported versions: build it with scripts/build-cni-plugin.sh\n")
		return ioFailure
	}
	newest := []rune(versions[len(versions)-1])
	env := environ()
	command := "" // as Python decodes it: an undecodable byte never makes it equal a command name
	if value, ok := env.get("CNI_COMMAND"); ok {
		command = runesString(value)
	}
	raw := readStdin()
	if command == "VERSION" { // the Python plugin's VERSION ignores NUL bytes (its installed sh part cannot hold them)
		raw = []byte(strings.ReplaceAll(string(raw), "\x00", ""))
	}
	if len(raw) > maxStdin {
		return fail(invalidConfig, "network configuration too large",
			[]rune("more than "+strconv.Itoa(maxStdin)+" bytes on stdin"), newest)
	}
	if !utf8.Valid(raw) {
		return fail(decodeFailure, "stdin is not valid UTF-8", []rune(utf8Error(raw)), newest)
	}
	stdin := string(raw)

	if !contains(commands, command) {
		what := "missing"
		if value, _ := env.get("CNI_COMMAND"); len(value) > 0 {
			what = "unknown: " + runesString(pyReprStr(value))
		}
		return fail(invalidEnv, "CNI_COMMAND "+what, []rune("CNI_COMMAND"), errorVersion(stdin, newest))
	}
	if command == "VERSION" {
		return answerVersion(stdin, versions, newest)
	}

	var conf *jsonValue // Python: {} when the text cannot name agentSocket/agentTimeout
	if strings.Contains(stdin, "agentSocket") || strings.Contains(stdin, "agentTimeout") || strings.Contains(stdin, `\u`) {
		conf = loads(stdin, settingsNesting)
	}
	path, timeout, cniEnv, bad := settings(env, conf)
	if bad != nil {
		return fail(bad.code, bad.msg, bad.details, errorVersion(stdin, newest))
	}
	var request strings.Builder
	request.Grow(len(stdin) + 1024)
	request.WriteString(`{"env":{`)
	for i, kv := range cniEnv {
		if i > 0 {
			request.WriteByte(',')
		}
		quoteASCII(&request, kv.key)
		request.WriteByte(':')
		quoteASCII(&request, kv.value)
	}
	request.WriteString(`},"stdin":`)
	quoteASCII(&request, []rune(stdin))
	request.WriteString("}\n")

	answer, err := exchange(path, []byte(request.String()), timeout)
	if err != nil {
		var gone *unreachable
		if errors.As(err, &gone) {
			if command == "STATUS" {
				return fail(pluginNotAvailable, "the leengine CNI agent is not available", surrogateEscape(gone.reason),
					errorVersion(stdin, newest))
			}
			return fail(tryAgainLater, "the leengine CNI agent is not available; try again later",
				surrogateEscape(gone.reason), errorVersion(stdin, newest))
		}
		// e.g. permission denied on the socket: retrying will not help
		return fail(ioFailure, "cannot talk to the leengine CNI agent", surrogateEscape(path+": "+pyOSError(err)),
			errorVersion(stdin, newest))
	}

	head, out, newline := cut(answer, '\n')
	digits := head
	if len(digits) > 0 && digits[0] == '-' {
		digits = digits[1:]
	}
	if !newline || !isDigits(digits) || len(digits) > 9 || len(answer) > maxAnswer || !utf8.Valid(out) {
		cutAt := len(answer)
		if cutAt > 200 {
			cutAt = 200
		}
		return fail(ioFailure, "the leengine CNI agent answered garbage", []rune(pyReprBytes(answer[:cutAt])),
			errorVersion(stdin, newest))
	}
	code, _ := strconv.Atoi(string(head))
	if len(out) > 0 {
		writeOut(out)
	}
	if code < 0 || code > 255 {
		return 1
	}
	return code
}

// --- the environment -------------------------------------------------------------------------------------------

type envVar struct{ key, value []rune }

type envList struct {
	vars  []envVar
	raw   [][2]string // the bytes, for the size check
	index map[string]int
}

// environ is the process environment as Python's posix.environ holds it: entries without "=" skipped, the first
// of duplicate names kept (Go's os.Environ drops later duplicates the same way), decoded with surrogateescape.
func environ() envList {
	list := envList{index: map[string]int{}}
	for _, entry := range os.Environ() {
		key, value, ok := strings.Cut(entry, "=")
		if !ok {
			continue
		}
		if _, seen := list.index[key]; seen {
			continue
		}
		list.index[key] = len(list.vars)
		list.vars = append(list.vars, envVar{surrogateEscape(key), surrogateEscape(value)})
		list.raw = append(list.raw, [2]string{key, value})
	}
	return list
}

func (e envList) get(name string) ([]rune, bool) {
	i, ok := e.index[name]
	if !ok {
		return nil, false
	}
	return e.vars[i].value, true
}

// settings: the socket, the deadline and the CNI_* variables to forward, or the refusal (checked in the Python
// plugin's order: socket, timeout, size of the variables).
func settings(env envList, conf *jsonValue) (string, float64, []envVar, *refused) {
	var path string
	if value, _ := env.get("LEENGINE_CNI_SOCKET"); len(value) > 0 {
		raw := env.raw[env.index["LEENGINE_CNI_SOCKET"]][1]
		if len(raw) > sunPathMax {
			return "", 0, nil, &refused{invalidEnv, "invalid LEENGINE_CNI_SOCKET",
				[]rune("LEENGINE_CNI_SOCKET: longer than " + strconv.Itoa(sunPathMax) + " bytes")}
		}
		path = raw
	} else if socket := conf.get("agentSocket"); socket == nil {
		path = defaultSocket
	} else {
		ok := socket.kind == jsonString && len(socket.str) > 0 && socket.str[0] == '/' && !containsRune(socket.str, 0)
		if ok {
			encoded, fits := encodeFsPath(socket.str)
			ok = fits && len(encoded) <= sunPathMax
			path = encoded
		}
		if !ok {
			return "", 0, nil, &refused{invalidConfig, "invalid network configuration field agentSocket",
				concat("agentSocket=", short(socket.repr()), ": expected an absolute path of at most "+
					strconv.Itoa(sunPathMax)+" bytes")}
		}
	}
	expected := "seconds, a number in (0, " + pyG(timeoutMax) + "]"
	var timeout float64
	if value, _ := env.get("LEENGINE_CNI_TIMEOUT"); len(value) > 0 {
		seconds, ok := pyFloat(value)
		if !ok || !(seconds > 0 && seconds <= timeoutMax) { // also nan and inf
			return "", 0, nil, &refused{invalidEnv, "invalid LEENGINE_CNI_TIMEOUT",
				concat("LEENGINE_CNI_TIMEOUT=", short(pyReprStr(value)), ": expected "+expected)}
		}
		timeout = seconds
	} else if limit := conf.get("agentTimeout"); limit == nil {
		timeout = defaultTimeout
	} else {
		if limit.kind != jsonNumber || !(limit.num > 0 && limit.num <= timeoutMax) {
			return "", 0, nil, &refused{invalidConfig, "invalid network configuration field agentTimeout",
				concat("agentTimeout=", short(limit.repr()), ": expected "+expected)}
		}
		timeout = limit.num
	}
	var cniEnv []envVar
	size := 0
	for i, v := range env.vars {
		if strings.HasPrefix(env.raw[i][0], "CNI_") {
			cniEnv = append(cniEnv, v)
			size += len(env.raw[i][0]) + len(env.raw[i][1])
		}
	}
	if size > maxEnv { // bytes; the agent checks they are UTF-8
		return "", 0, nil, &refused{invalidEnv, "CNI_* environment too large",
			[]rune("more than " + strconv.Itoa(maxEnv) + " bytes in CNI_* variables")}
	}
	return path, timeout, cniEnv, nil
}

// --- stdin, stdout, stderr -------------------------------------------------------------------------------------

// readStdin reads at most maxStdin + 1 bytes: the rest is never read.
func readStdin() []byte {
	buf := make([]byte, 0, 4096)
	for len(buf) <= maxStdin {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), 2*cap(buf))
			copy(grown, buf)
			buf = grown
		}
		limit := cap(buf)
		if limit > maxStdin+1 {
			limit = maxStdin + 1
		}
		n, err := os.Stdin.Read(buf[len(buf):limit])
		buf = buf[:len(buf)+n]
		if err != nil || (n == 0 && limit > len(buf)) {
			if err == nil || errors.Is(err, syscall.EINTR) {
				continue
			}
			break // EOF, or stdin closed/absent: what Python's read() would end with too
		}
		if len(buf) == maxStdin+1 {
			break
		}
	}
	return buf
}

func writeOut(data []byte) {
	if len(data) == 0 || data[len(data)-1] != '\n' {
		data = append(data[:len(data):len(data)], '\n')
	}
	os.Stdout.Write(data)
}

// fail prints the spec's error object (the bytes the Python plugin prints) and one line for humans on stderr.
func fail(code int, msg string, details []rune, cniVersion []rune) int {
	var out strings.Builder
	out.WriteString(`{"cniVersion": `)
	quoteASCII(&out, cniVersion)
	out.WriteString(`, "code": ` + strconv.Itoa(code) + `, "msg": `)
	quoteASCII(&out, []rune(msg))
	out.WriteString(`, "details": `)
	quoteASCII(&out, details)
	out.WriteString("}")
	writeOut([]byte(out.String()))
	os.Stderr.WriteString("leengine-cni: " + msg + ": " + stderrText(details) + "\n")
	return 1
}

// --- VERSION ---------------------------------------------------------------------------------------------------

func answerVersion(stdin string, versions []string, newest []rune) int {
	version, simple := simpleVersion(stdin)
	if !simple { // not the shape libcni sends: parse it properly
		conf := loads(stdin, versionNesting)
		if len(pyStrip([]rune(stdin))) > 0 && conf == nil {
			return fail(decodeFailure, "failed to decode the VERSION request", []rune("stdin is not a JSON object"), newest)
		}
		version = cniVersion(conf)
	}
	var echoed strings.Builder
	if len(version) > 0 && plain(version) {
		echoed.WriteString(`"` + string(version) + `"`)
	} else if len(version) > 0 {
		quoteASCII(&echoed, version)
	} else {
		quoteASCII(&echoed, newest)
	}
	quoted := make([]string, len(versions))
	for i, v := range versions {
		quoted[i] = `"` + v + `"`
	}
	writeOut([]byte(`{"cniVersion": ` + echoed.String() + `, "supportedVersions": [` + strings.Join(quoted, ", ") + "]}"))
	return 0
}

// simpleVersion reads {"cniVersion": "X"} (what libcni sends), "" or {} without a JSON parser; false for any other
// text (the caller parses it). As cni_plugin._simple_version.
func simpleVersion(stdin string) ([]rune, bool) {
	text := strings.Trim(stdin, " \t\n\r")
	if text == "" {
		return nil, true
	}
	if text[0] != '{' || text[len(text)-1] != '}' {
		return nil, false
	}
	inner := strings.Trim(text[1:len(text)-1], " \t\n\r")
	if inner == "" {
		return nil, true
	}
	key, value, _ := strings.Cut(inner, ":")
	value = strings.Trim(value, " \t\n\r")
	if strings.TrimRight(key, " \t\n\r") != `"cniVersion"` || len(value) < 2 || value[0] != '"' || value[len(value)-1] != '"' {
		return nil, false
	}
	version := []rune(value[1 : len(value)-1])
	if !plain(version) {
		return nil, false
	}
	return version, true
}

// plain: printable ASCII without quotes or backslashes (JSON's quoted form is the text between two quotes).
func plain(text []rune) bool {
	for _, r := range text {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			return false
		}
	}
	return true
}

func cniVersion(conf *jsonValue) []rune {
	if v := conf.get("cniVersion"); v != nil && v.kind == jsonString && len(v.str) > 0 {
		return v.str
	}
	return nil
}

// errorVersion: the cniVersion for an error object the plugin prints itself: the configuration's, else the newest.
func errorVersion(stdin string, newest []rune) []rune {
	if v := cniVersion(loads(stdin, versionNesting)); v != nil {
		return v
	}
	return newest
}

// --- the agent -------------------------------------------------------------------------------------------------

// exchange: the agent's whole answer, every byte until it closes the connection (at most a little over maxAnswer).
func exchange(path string, request []byte, timeout float64) ([]byte, error) {
	deadline := time.Now().Add(seconds(timeout))
	dialTimeout := math.Min(connectTimeout, timeout)
	address := path
	if strings.HasPrefix(address, "@") { // Go would take it for the abstract namespace; Python connects to the file
		address = "./" + address
	}
	conn, err := net.DialTimeout("unix", address, seconds(dialTimeout))
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, &unreachable{path + ": " + strerror(err)}
		}
		var netErr net.Error
		if errors.As(err, &netErr) && netErr.Timeout() {
			return nil, &unreachable{path + ": connect timed out after " + pyG(dialTimeout) + "s"}
		}
		return nil, err
	}
	defer conn.Close()
	answer, err := talk(conn, request, deadline)
	if err != nil {
		var netErr net.Error
		switch {
		case errors.As(err, &netErr) && netErr.Timeout():
			return nil, &unreachable{path + ": no answer within " + pyG(timeout) + "s"}
		case errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET):
			return nil, &unreachable{path + ": the agent hung up: " + strerror(err)}
		}
		return nil, err
	}
	if len(answer) == 0 {
		return nil, &unreachable{path + ": the agent closed the connection without answering"}
	}
	return answer, nil
}

// talk sends the request and reads until the agent closes; each step may take what is left of the deadline, at
// least 1 ms (as the Python plugin's settimeout(max(deadline - now, 0.001))).
func talk(conn net.Conn, request []byte, deadline time.Time) ([]byte, error) {
	stepDeadline := func() time.Time {
		if least := time.Now().Add(time.Millisecond); deadline.Before(least) {
			return least
		}
		return deadline
	}
	conn.SetDeadline(stepDeadline())
	if _, err := conn.Write(request); err != nil {
		return nil, err
	}
	answer := make([]byte, 0, 65536)
	chunk := make([]byte, 65536)
	for {
		conn.SetDeadline(stepDeadline())
		n, err := conn.Read(chunk)
		answer = append(answer, chunk[:n]...)
		if len(answer) > maxAnswer {
			return answer, nil
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return answer, nil
			}
			return answer, err
		}
	}
}

func seconds(s float64) time.Duration {
	if d := time.Duration(s * float64(time.Second)); d > 0 {
		return d
	}
	return time.Nanosecond // a Dialer's 0 would mean no timeout at all
}

// strerror: the C library's text for the error's errno, as Python's OSError.strerror holds it.
func strerror(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		text := errno.Error()
		return strings.ToUpper(text[:1]) + text[1:]
	}
	return err.Error()
}

// pyOSError: str(OSError) in Python: "[Errno N] Text".
func pyOSError(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return "[Errno " + strconv.Itoa(int(errno)) + "] " + strerror(err)
	}
	return err.Error()
}

// --- JSON as Python's json module reads it ---------------------------------------------------------------------

type jsonKind int

const (
	jsonNull jsonKind = iota
	jsonBool
	jsonNumber
	jsonString
	jsonArray
	jsonObject_
)

type jsonValue struct {
	kind    jsonKind
	boolean bool
	num     float64
	isInt   bool
	text    string // an integer's digits as written
	str     []rune
	items   []*jsonValue
	keys    [][]rune // insertion order; a repeated key keeps its first place and takes the last value
	values  map[string]*jsonValue
}

// get: the value of a top-level key, or nil when absent, null, or the text was not a JSON object (conf.get in Python).
func (v *jsonValue) get(key string) *jsonValue {
	if v == nil || v.kind != jsonObject_ {
		return nil
	}
	value := v.values[key]
	if value == nil || value.kind == jsonNull {
		return nil
	}
	return value
}

type parser struct {
	text  string
	pos   int
	depth int
	bad   bool

	maxNesting int
}

// loads: json.loads(text) when that is an object, else nil (not JSON, nested too deeply, trailing data, ...).
func loads(text string, maxNesting int) *jsonValue {
	p := &parser{text: text, maxNesting: maxNesting}
	p.skip()
	value := p.value()
	if p.bad || value == nil {
		return nil
	}
	p.skip()
	if p.pos != len(p.text) || value.kind != jsonObject_ {
		return nil
	}
	return value
}

func (p *parser) skip() {
	for p.pos < len(p.text) && strings.IndexByte(" \t\n\r", p.text[p.pos]) >= 0 {
		p.pos++
	}
}

func (p *parser) fail() *jsonValue {
	p.bad = true
	return nil
}

func (p *parser) value() *jsonValue {
	if p.bad || p.pos >= len(p.text) {
		return p.fail()
	}
	rest := p.text[p.pos:]
	switch c := rest[0]; {
	case c == '"':
		p.pos++
		s := p.string()
		if s == nil && p.bad {
			return nil
		}
		return &jsonValue{kind: jsonString, str: s}
	case c == '{' || c == '[':
		p.depth++
		if p.depth > p.maxNesting {
			return p.fail()
		}
		defer func() { p.depth-- }()
		p.pos++
		if c == '{' {
			return p.object()
		}
		return p.array()
	case strings.HasPrefix(rest, "null"):
		p.pos += 4
		return &jsonValue{kind: jsonNull}
	case strings.HasPrefix(rest, "true"):
		p.pos += 4
		return &jsonValue{kind: jsonBool, boolean: true}
	case strings.HasPrefix(rest, "false"):
		p.pos += 5
		return &jsonValue{kind: jsonBool}
	case strings.HasPrefix(rest, "NaN"):
		p.pos += 3
		return &jsonValue{kind: jsonNumber, num: math.NaN()}
	case strings.HasPrefix(rest, "Infinity"):
		p.pos += 8
		return &jsonValue{kind: jsonNumber, num: math.Inf(1)}
	case strings.HasPrefix(rest, "-Infinity"):
		p.pos += 9
		return &jsonValue{kind: jsonNumber, num: math.Inf(-1)}
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	}
	return p.fail()
}

func digitsAt(s string, i int) int {
	j := i
	for j < len(s) && s[j] >= '0' && s[j] <= '9' {
		j++
	}
	return j - i
}

func (p *parser) number() *jsonValue {
	s, start := p.text, p.pos
	i := start
	if s[i] == '-' {
		i++
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case i < len(s) && s[i] >= '1' && s[i] <= '9':
		i += digitsAt(s, i)
	default:
		return p.fail()
	}
	isInt := true
	if i+1 < len(s) && s[i] == '.' && s[i+1] >= '0' && s[i+1] <= '9' {
		i += 1 + digitsAt(s, i+1)
		isInt = false
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		j := i + 1
		if j < len(s) && (s[j] == '+' || s[j] == '-') {
			j++
		}
		if n := digitsAt(s, j); n > 0 {
			i = j + n
			isInt = false
		}
	}
	text := s[start:i]
	p.pos = i
	if isInt {
		digits := strings.TrimPrefix(text, "-")
		if len(digits) > maxIntDigits {
			return p.fail()
		}
		num, _ := strconv.ParseFloat(text, 64)
		if digits == "0" {
			text = "0" // int("-0") == 0
		}
		return &jsonValue{kind: jsonNumber, num: num, isInt: true, text: text}
	}
	num, _ := strconv.ParseFloat(text, 64) // out of range: ±Inf or 0, as float() gives
	return &jsonValue{kind: jsonNumber, num: num}
}

func hex4(s string) (rune, bool) {
	if len(s) < 4 {
		return 0, false
	}
	value, err := strconv.ParseUint(s[:4], 16, 32)
	return rune(value), err == nil && !strings.ContainsAny(s[:4], "+-_xX")
}

// string: after the opening quote; Python's strict scanner: no raw control characters, JSON's escapes, a \uD8xx
// followed by \uDCxx is one character, any other surrogate stays a lone one.
func (p *parser) string() []rune {
	out := []rune{}
	s := p.text
	for p.pos < len(s) {
		c := s[p.pos]
		switch {
		case c == '"':
			p.pos++
			return out
		case c < 0x20:
			p.fail()
			return nil
		case c == '\\':
			if p.pos+1 >= len(s) {
				p.fail()
				return nil
			}
			e := s[p.pos+1]
			p.pos += 2
			switch e {
			case '"', '\\', '/':
				out = append(out, rune(e))
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				r, ok := hex4(s[p.pos:])
				if !ok {
					p.fail()
					return nil
				}
				p.pos += 4
				if r >= 0xd800 && r <= 0xdbff && strings.HasPrefix(s[p.pos:], `\u`) {
					if low, ok := hex4(s[p.pos+2:]); ok && low >= 0xdc00 && low <= 0xdfff {
						r = 0x10000 + (r-0xd800)<<10 + (low - 0xdc00)
						p.pos += 6
					}
				}
				out = append(out, r)
			default:
				p.fail()
				return nil
			}
		default:
			r, size := utf8.DecodeRuneInString(s[p.pos:])
			out = append(out, r)
			p.pos += size
		}
	}
	p.fail()
	return nil
}

func (p *parser) object() *jsonValue {
	obj := &jsonValue{kind: jsonObject_, values: map[string]*jsonValue{}}
	p.skip()
	if p.pos < len(p.text) && p.text[p.pos] == '}' {
		p.pos++
		return obj
	}
	for {
		if p.pos >= len(p.text) || p.text[p.pos] != '"' {
			return p.fail()
		}
		p.pos++
		key := p.string()
		if p.bad {
			return nil
		}
		p.skip()
		if p.pos >= len(p.text) || p.text[p.pos] != ':' {
			return p.fail()
		}
		p.pos++
		p.skip()
		value := p.value()
		if p.bad {
			return nil
		}
		name := runesKey(key)
		if _, seen := obj.values[name]; !seen {
			obj.keys = append(obj.keys, key)
		}
		obj.values[name] = value
		p.skip()
		if p.pos < len(p.text) && p.text[p.pos] == '}' {
			p.pos++
			return obj
		}
		if p.pos >= len(p.text) || p.text[p.pos] != ',' {
			return p.fail()
		}
		p.pos++
		p.skip()
	}
}

func (p *parser) array() *jsonValue {
	arr := &jsonValue{kind: jsonArray}
	p.skip()
	if p.pos < len(p.text) && p.text[p.pos] == ']' {
		p.pos++
		return arr
	}
	for {
		value := p.value()
		if p.bad {
			return nil
		}
		arr.items = append(arr.items, value)
		p.skip()
		if p.pos < len(p.text) && p.text[p.pos] == ']' {
			p.pos++
			return arr
		}
		if p.pos >= len(p.text) || p.text[p.pos] != ',' {
			return p.fail()
		}
		p.pos++
		p.skip()
	}
}

// runesKey: a map key that keeps lone surrogates distinct (string(rune) would turn them all into U+FFFD).
func runesKey(r []rune) string {
	var b strings.Builder
	for _, c := range r {
		if c >= 0xd800 && c <= 0xdfff {
			b.WriteString("\x00" + strconv.Itoa(int(c)) + "\x00")
		} else {
			b.WriteRune(c)
		}
	}
	return b.String()
}

// --- Python's text conventions ---------------------------------------------------------------------------------

// surrogateEscape decodes bytes as Python's os.fsdecode does: UTF-8, each undecodable byte as U+DC80+byte.
func surrogateEscape(s string) []rune {
	out := make([]rune, 0, len(s))
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size <= 1 {
			out = append(out, 0xdc00+rune(s[i]))
			i++
			continue
		}
		out = append(out, r)
		i += size
	}
	return out
}

// encodeFsPath encodes a path as Python's socket.connect would (UTF-8, surrogateescape); false for a lone
// surrogate it cannot encode. Its length check is UTF-8 with surrogatepass (3 bytes per surrogate), as Python's.
func encodeFsPath(r []rune) (string, bool) {
	var b strings.Builder
	passLength := 0
	ok := true
	for _, c := range r {
		switch {
		case c >= 0xdc80 && c <= 0xdcff:
			b.WriteByte(byte(c - 0xdc00))
			passLength += 3
		case c >= 0xd800 && c <= 0xdfff:
			ok = false
			passLength += 3
		default:
			b.WriteRune(c)
			passLength += utf8.RuneLen(c)
		}
	}
	if passLength > sunPathMax {
		return "", false
	}
	return b.String(), ok
}

// runesString: the runes as a Go string, a lone surrogate as the byte it escaped (or U+FFFD).
func runesString(r []rune) string {
	var b strings.Builder
	for _, c := range r {
		if c >= 0xdc80 && c <= 0xdcff {
			b.WriteByte(byte(c - 0xdc00))
		} else {
			b.WriteRune(c)
		}
	}
	return b.String()
}

// stderrText: what Python writes to stderr for the text (errors="backslashreplace" for lone surrogates).
func stderrText(r []rune) string {
	var b strings.Builder
	for _, c := range r {
		if c >= 0xd800 && c <= 0xdfff {
			b.WriteString(`\u` + hexPad(int(c), 4))
		} else {
			b.WriteRune(c)
		}
	}
	return b.String()
}

// quoteASCII: _json.encode_basestring_ascii, i.e. a JSON string in ASCII as json.dumps(ensure_ascii=True) writes it.
func quoteASCII(b *strings.Builder, r []rune) {
	b.WriteByte('"')
	for _, c := range r {
		switch {
		case c == '"':
			b.WriteString(`\"`)
		case c == '\\':
			b.WriteString(`\\`)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\r':
			b.WriteString(`\r`)
		case c == '\t':
			b.WriteString(`\t`)
		case c == '\b':
			b.WriteString(`\b`)
		case c == '\f':
			b.WriteString(`\f`)
		case c >= 0x20 && c <= 0x7e:
			b.WriteByte(byte(c))
		case c >= 0x10000:
			c -= 0x10000
			b.WriteString(`\u` + hexPad(int(0xd800|(c>>10)), 4) + `\u` + hexPad(int(0xdc00|(c&0x3ff)), 4))
		default:
			b.WriteString(`\u` + hexPad(int(c), 4))
		}
	}
	b.WriteByte('"')
}

func hexPad(v, width int) string {
	s := strconv.FormatInt(int64(v), 16)
	for len(s) < width {
		s = "0" + s
	}
	return s
}

// pyIsSpace: str.isspace() of one character.
func pyIsSpace(r rune) bool {
	return unicode.IsSpace(r) || (r >= 0x1c && r <= 0x1f)
}

func pyStrip(r []rune) []rune {
	start, end := 0, len(r)
	for start < end && pyIsSpace(r[start]) {
		start++
	}
	for end > start && pyIsSpace(r[end-1]) {
		end--
	}
	return r[start:end]
}

// unicode14 holds what CPython 3.11's Unicode database (14.0) has and Go 1.19's (13.0) lacks: the characters
// added in 14.0, all printable (pyPrintable), among them the Tangsa digits 0x16ac0-0x16ac9 (pyDecimal). Generated
// by comparing str.isprintable()/isdecimal() with unicode.IsPrint/Nd over every code point; the property tests in
// tests/unit/test_cni_plugin.py find any other difference a newer Go or Python brings.
var unicode14 = &unicode.RangeTable{R32: []unicode.Range32{
	{0x61d, 0x61d, 1}, {0x870, 0x88e, 1}, {0x898, 0x89f, 1}, {0x8b5, 0x8b5, 1}, {0x8c8, 0x8d2, 1}, {0xc3c, 0xc3c, 1},
	{0xc5d, 0xc5d, 1}, {0xcdd, 0xcdd, 1}, {0x170d, 0x170d, 1}, {0x1715, 0x1715, 1}, {0x171f, 0x171f, 1},
	{0x180f, 0x180f, 1}, {0x1ac1, 0x1ace, 1}, {0x1b4c, 0x1b4c, 1}, {0x1b7d, 0x1b7e, 1}, {0x1dfa, 0x1dfa, 1},
	{0x20c0, 0x20c0, 1}, {0x2c2f, 0x2c2f, 1}, {0x2c5f, 0x2c5f, 1}, {0x2e53, 0x2e5d, 1}, {0x9ffd, 0x9fff, 1},
	{0xa7c0, 0xa7c1, 1}, {0xa7d0, 0xa7d1, 1}, {0xa7d3, 0xa7d3, 1}, {0xa7d5, 0xa7d9, 1}, {0xa7f2, 0xa7f4, 1},
	{0xfbc2, 0xfbc2, 1}, {0xfd40, 0xfd4f, 1}, {0xfdcf, 0xfdcf, 1}, {0xfdfe, 0xfdff, 1}, {0x10570, 0x1057a, 1},
	{0x1057c, 0x1058a, 1}, {0x1058c, 0x10592, 1}, {0x10594, 0x10595, 1}, {0x10597, 0x105a1, 1}, {0x105a3, 0x105b1, 1},
	{0x105b3, 0x105b9, 1}, {0x105bb, 0x105bc, 1}, {0x10780, 0x10785, 1}, {0x10787, 0x107b0, 1}, {0x107b2, 0x107ba, 1},
	{0x10f70, 0x10f89, 1}, {0x11070, 0x11075, 1}, {0x110c2, 0x110c2, 1}, {0x116b9, 0x116b9, 1}, {0x11740, 0x11746, 1},
	{0x11ab0, 0x11abf, 1}, {0x12f90, 0x12ff2, 1}, {0x16a70, 0x16abe, 1}, {0x16ac0, 0x16ac9, 1}, {0x1aff0, 0x1aff3, 1},
	{0x1aff5, 0x1affb, 1}, {0x1affd, 0x1affe, 1}, {0x1b11f, 0x1b122, 1}, {0x1cf00, 0x1cf2d, 1}, {0x1cf30, 0x1cf46, 1},
	{0x1cf50, 0x1cfc3, 1}, {0x1d1e9, 0x1d1ea, 1}, {0x1df00, 0x1df1e, 1}, {0x1e290, 0x1e2ae, 1}, {0x1e7e0, 0x1e7e6, 1},
	{0x1e7e8, 0x1e7eb, 1}, {0x1e7ed, 0x1e7ee, 1}, {0x1e7f0, 0x1e7fe, 1}, {0x1f6dd, 0x1f6df, 1}, {0x1f7f0, 0x1f7f0, 1},
	{0x1f979, 0x1f979, 1}, {0x1f9cc, 0x1f9cc, 1}, {0x1fa7b, 0x1fa7c, 1}, {0x1faa9, 0x1faac, 1}, {0x1fab7, 0x1faba, 1},
	{0x1fac3, 0x1fac5, 1}, {0x1fad7, 0x1fad9, 1}, {0x1fae0, 0x1fae7, 1}, {0x1faf0, 0x1faf6, 1}, {0x2a6de, 0x2a6df, 1},
	{0x2b735, 0x2b738, 1},
}}

// pyPrintable: str.isprintable() of one character (Go's tables and unicode14 stand in for Python's database).
func pyPrintable(r rune) bool {
	if r >= 0xd800 && r <= 0xdfff {
		return false
	}
	return unicode.IsPrint(r) || unicode.Is(unicode14, r)
}

// pyDecimal: str.isdecimal() of one character; its value is digitValue's.
func pyDecimal(r rune) bool {
	return unicode.Is(unicode.Nd, r) || (r >= 0x16ac0 && r <= 0x16ac9)
}

// pyReprStr: repr() of a str.
func pyReprStr(r []rune) []rune {
	quote := '\''
	if containsRune(r, '\'') && !containsRune(r, '"') {
		quote = '"'
	}
	out := []rune{quote}
	for _, c := range r {
		switch {
		case c == quote || c == '\\':
			out = append(out, '\\', c)
		case c == '\t':
			out = append(out, '\\', 't')
		case c == '\n':
			out = append(out, '\\', 'n')
		case c == '\r':
			out = append(out, '\\', 'r')
		case c < 0x20 || c == 0x7f:
			out = append(out, []rune(`\x`+hexPad(int(c), 2))...)
		case c < 0x7f || pyPrintable(c):
			out = append(out, c)
		case c <= 0xff:
			out = append(out, []rune(`\x`+hexPad(int(c), 2))...)
		case c <= 0xffff:
			out = append(out, []rune(`\u`+hexPad(int(c), 4))...)
		default:
			out = append(out, []rune(`\U`+hexPad(int(c), 8))...)
		}
	}
	return append(out, quote)
}

// pyReprBytes: repr() of a bytes object.
func pyReprBytes(data []byte) string {
	quote := byte('\'')
	if strings.IndexByte(string(data), '\'') >= 0 && strings.IndexByte(string(data), '"') < 0 {
		quote = '"'
	}
	var b strings.Builder
	b.WriteString("b" + string(quote))
	for _, c := range data {
		switch {
		case c == quote || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '\t':
			b.WriteString(`\t`)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\r':
			b.WriteString(`\r`)
		case c < 0x20 || c >= 0x7f:
			b.WriteString(`\x` + hexPad(int(c), 2))
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte(quote)
	return b.String()
}

// pyReprFloat: repr() of a float (shortest round-trip digits; exponent form below 1e-4 and from 1e16).
func pyReprFloat(f float64) string {
	switch {
	case math.IsNaN(f):
		return "nan"
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	}
	exp := strconv.FormatFloat(f, 'e', -1, 64)
	e, _ := strconv.Atoi(exp[strings.IndexByte(exp, 'e')+1:])
	if e < -4 || e >= 16 {
		return exp
	}
	fixed := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsRune(fixed, '.') {
		fixed += ".0"
	}
	return fixed
}

// pyG: format(x, "g").
func pyG(f float64) string {
	return strconv.FormatFloat(f, 'g', 6, 64)
}

func (v *jsonValue) repr() []rune {
	switch v.kind {
	case jsonNull:
		return []rune("None")
	case jsonBool:
		if v.boolean {
			return []rune("True")
		}
		return []rune("False")
	case jsonNumber:
		if v.isInt {
			return []rune(v.text)
		}
		return []rune(pyReprFloat(v.num))
	case jsonString:
		return pyReprStr(v.str)
	case jsonArray:
		out := []rune{'['}
		for i, item := range v.items {
			if i > 0 {
				out = append(out, ',', ' ')
			}
			out = append(out, item.repr()...)
		}
		return append(out, ']')
	}
	out := []rune{'{'}
	for i, key := range v.keys {
		if i > 0 {
			out = append(out, ',', ' ')
		}
		out = append(out, pyReprStr(key)...)
		out = append(out, ':', ' ')
		out = append(out, v.values[runesKey(key)].repr()...)
	}
	return append(out, '}')
}

func short(text []rune) []rune {
	if len(text) <= 100 {
		return text
	}
	return append(text[:100:100], '.', '.', '.')
}

// pyFloat: float(text) in Python: surrounding whitespace, Unicode decimal digits, "_" between digits, inf/nan.
// As CPython does it: non-ASCII whitespace becomes " " and decimal digits their ASCII digit, any other non-ASCII
// character refuses, then ASCII whitespace (" \t\n\v\f\r", not \x1c-\x1f) is stripped from both ends.
func pyFloat(text []rune) (float64, bool) {
	var ascii []byte
	for _, c := range text {
		switch {
		case c < 0x80:
			ascii = append(ascii, byte(c))
		case pyIsSpace(c):
			ascii = append(ascii, ' ')
		case pyDecimal(c):
			ascii = append(ascii, byte('0'+digitValue(c)))
		default:
			return 0, false
		}
	}
	s := strings.Trim(string(ascii), " \t\n\v\f\r")
	for i := 0; i < len(s); i++ {
		if s[i] == '_' && (i == 0 || i == len(s)-1 || !isDigit(s[i-1]) || !isDigit(s[i+1])) {
			return 0, false
		}
	}
	s = strings.ReplaceAll(s, "_", "")
	body := strings.TrimLeft(s, "+-")
	if len(s)-len(body) > 1 {
		return 0, false
	}
	switch strings.ToLower(body) {
	case "inf", "infinity":
		return math.Inf(1), true // the sign does not matter: out of range either way
	case "nan":
		return math.NaN(), true
	}
	mantissa, exponent, hasExp := strings.Cut(strings.ToLower(body), "e")
	intPart, frac, _ := strings.Cut(mantissa, ".")
	if (intPart == "" && frac == "") || !allDigits(intPart) || !allDigits(frac) || strings.Count(mantissa, ".") > 1 {
		return 0, false
	}
	if hasExp {
		if !isDigits([]byte(strings.TrimLeft(exponent, "+-"))) || len(exponent)-len(strings.TrimLeft(exponent, "+-")) > 1 {
			return 0, false
		}
	}
	value, err := strconv.ParseFloat(s, 64)
	if err != nil {
		var numErr *strconv.NumError
		if !errors.As(err, &numErr) || numErr.Err != strconv.ErrRange {
			return 0, false
		}
	}
	return value, true
}

// digitValue: the value of a Unicode decimal digit (Nd comes in runs of ten, each starting at its zero).
func digitValue(c rune) int {
	for _, r := range unicode.Nd.R16 {
		if rune(r.Lo) <= c && c <= rune(r.Hi) {
			return int(c-rune(r.Lo)) % 10
		}
	}
	for _, r := range unicode.Nd.R32 {
		if rune(r.Lo) <= c && c <= rune(r.Hi) {
			return int(c-rune(r.Lo)) % 10
		}
	}
	return int(c-0x16ac0) % 10 // Tangsa (Unicode 14)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return false
		}
	}
	return true
}

func isDigits(b []byte) bool {
	return len(b) > 0 && allDigits(string(b))
}

// utf8Error: str(UnicodeDecodeError) for the first undecodable sequence, as Python words it.
func utf8Error(raw []byte) string {
	i := 0
	for i < len(raw) {
		r, size := utf8.DecodeRune(raw[i:])
		if r == utf8.RuneError && size == 1 {
			break
		}
		i += size
	}
	if i >= len(raw) {
		return "'utf-8' codec can't decode"
	}
	c := raw[i]
	need, lo, hi := 0, byte(0x80), byte(0xbf)
	switch {
	case c >= 0xc2 && c <= 0xdf:
		need = 1
	case c >= 0xe0 && c <= 0xef:
		need = 2
		if c == 0xe0 {
			lo = 0xa0
		} else if c == 0xed {
			hi = 0x9f
		}
	case c >= 0xf0 && c <= 0xf4:
		need = 3
		if c == 0xf0 {
			lo = 0x90
		} else if c == 0xf4 {
			hi = 0x8f
		}
	}
	reason, j := "invalid start byte", i+1
	if need > 0 {
		reason = "invalid continuation byte"
		for k := 0; k < need; k++ {
			if j >= len(raw) {
				reason = "unexpected end of data"
				break
			}
			if b := raw[j]; (k == 0 && (b < lo || b > hi)) || (k > 0 && (b < 0x80 || b > 0xbf)) {
				break
			}
			j++
		}
	}
	if j == i+1 {
		return "'utf-8' codec can't decode byte 0x" + hexPad(int(c), 2) + " in position " + strconv.Itoa(i) + ": " + reason
	}
	return "'utf-8' codec can't decode bytes in position " + strconv.Itoa(i) + "-" + strconv.Itoa(j-1) + ": " + reason
}

// --- small helpers ---------------------------------------------------------------------------------------------

func contains(list []string, s string) bool {
	for _, item := range list {
		if item == s {
			return true
		}
	}
	return false
}

func containsRune(r []rune, c rune) bool {
	for _, x := range r {
		if x == c {
			return true
		}
	}
	return false
}

func concat(prefix string, middle []rune, suffix string) []rune {
	out := append([]rune(prefix), middle...)
	return append(out, []rune(suffix)...)
}

func cut(data []byte, sep byte) ([]byte, []byte, bool) {
	for i, c := range data {
		if c == sep {
			return data[:i], data[i+1:], true
		}
	}
	return data, nil, false
}
