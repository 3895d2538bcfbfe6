// cnitool: drive CNI plugins through libcni exactly as a container runtime does.
//
// Debian's golang-github-appc-cni-dev ships libcni (1.1.2) but not upstream's
// cnitool command, so this is a small equivalent written for the testbed and
// built offline by scripts/build-cnitool.sh. It loads a network configuration
// list by name, runs its plugins through libcni (chaining, prevResult, result
// cache, capability args: all libcni's own code), and prints what libcni returns.
//
//	cnitool add|check|del <network-name> <netns-path>
//	cnitool version <plugin-type>
//
// Environment: NETCONFPATH (directory of *.conflist, default /etc/cni/net.d),
// CNI_PATH (plugin directories, ':'-separated), CNI_IFNAME (default eth0),
// CNI_CONTAINERID (default derived from the netns path), CNI_ARGS (K=V;K2=V2),
// CAP_ARGS (JSON object of capability args, e.g. portMappings), CNI_CACHE_DIR
// (libcni's result cache, default /var/lib/cni).
//
// On failure it prints the plugin's CNI error object ({"code","msg","details"})
// on stdout when libcni returned one, and exits 1. libcni 1.1.2 speaks CNI spec
// up to 1.0.0: it has no GC or STATUS.
package main

import (
	"context"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		var cniErr *types.Error
		if errors.As(err, &cniErr) {
			out, _ := json.Marshal(cniErr)
			fmt.Println(string(out))
		}
		fmt.Fprintln(os.Stderr, "cnitool:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 2 && args[0] == "version" {
		return version(args[1])
	}
	if len(args) != 3 {
		return fmt.Errorf("usage: cnitool add|check|del <network-name> <netns-path> | cnitool version <plugin-type>")
	}
	command, name, netns := args[0], args[1], args[2]
	netns, err := filepath.Abs(netns)
	if err != nil {
		return err
	}
	list, err := libcni.LoadConfList(envOr("NETCONFPATH", "/etc/cni/net.d"), name)
	if err != nil {
		return err
	}
	rt, err := runtimeConf(netns)
	if err != nil {
		return err
	}
	cni := libcni.NewCNIConfigWithCacheDir(pluginPath(), envOr("CNI_CACHE_DIR", libcni.CacheDir), nil)
	ctx := context.Background()

	switch command {
	case "add":
		// A careful runtime validates first: libcni asks every plugin for VERSION.
		if _, err := cni.ValidateNetworkList(ctx, list); err != nil {
			return fmt.Errorf("validate: %w", err)
		}
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		return result.Print()
	case "check":
		return cni.CheckNetworkList(ctx, list, rt)
	case "del":
		return cni.DelNetworkList(ctx, list, rt)
	}
	return fmt.Errorf("unknown command %q (add, check, del, version)", command)
}

func version(pluginType string) error {
	cni := libcni.NewCNIConfig(pluginPath(), nil)
	info, err := cni.GetVersionInfo(context.Background(), pluginType)
	if err != nil {
		return err
	}
	out, err := json.Marshal(map[string][]string{"supportedVersions": info.SupportedVersions()})
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

func runtimeConf(netns string) (*libcni.RuntimeConf, error) {
	containerID := os.Getenv("CNI_CONTAINERID")
	if containerID == "" {
		sum := sha512.Sum512([]byte(netns))
		containerID = "cnitool-" + hex.EncodeToString(sum[:])[:20]
	}
	rt := &libcni.RuntimeConf{ContainerID: containerID, NetNS: netns, IfName: envOr("CNI_IFNAME", "eth0")}
	if raw := os.Getenv("CNI_ARGS"); raw != "" {
		for _, pair := range strings.Split(raw, ";") {
			kv := strings.SplitN(pair, "=", 2)
			if len(kv) != 2 {
				return nil, fmt.Errorf("CNI_ARGS: bad pair %q", pair)
			}
			rt.Args = append(rt.Args, [2]string{kv[0], kv[1]})
		}
	}
	if raw := os.Getenv("CAP_ARGS"); raw != "" {
		if err := json.Unmarshal([]byte(raw), &rt.CapabilityArgs); err != nil {
			return nil, fmt.Errorf("CAP_ARGS: %w", err)
		}
	}
	return rt, nil
}

func pluginPath() []string {
	return filepath.SplitList(envOr("CNI_PATH", "/opt/cni/bin"))
}

func envOr(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}
