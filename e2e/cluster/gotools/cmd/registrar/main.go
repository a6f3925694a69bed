// Command registrar registers Weir's CSI node plugin with the kubelet's
// plugin watcher: it serves the kubelet's plugin registration API on a
// socket in the kubelet's plugins_registry directory, answering with the
// CSI socket's path. (Go's HTTP/2 accepts the socket path the kubelet's
// client sends as :authority, which Rust's h2 refuses.)
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type registrar struct {
	name     string
	endpoint string
}

func (r registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              r.name,
		Endpoint:          r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r registrar) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if s.PluginRegistered {
		log.Printf("registered %s with the kubelet", r.name)
	} else {
		log.Printf("the kubelet refused %s: %s", r.name, s.Error)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

func main() {
	name := flag.String("driver", "csi.weir.io", "CSI driver name")
	endpoint := flag.String("kubelet-endpoint", "/var/lib/kubelet/plugins/csi.weir.io/csi.sock", "the CSI socket as the kubelet sees it")
	dir := flag.String("registration-dir", "/registration", "the kubelet's plugins_registry directory")
	flag.Parse()
	socket := filepath.Join(*dir, *name+"-reg.sock")
	_ = os.Remove(socket)
	l, err := net.Listen("unix", socket)
	if err != nil {
		log.Fatalf("listening on %s: %v", socket, err)
	}
	server := grpc.NewServer()
	registerapi.RegisterRegistrationServer(server, registrar{name: *name, endpoint: *endpoint})
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		server.Stop()
		_ = os.Remove(socket)
	}()
	log.Printf("serving registration for %s at %s", *name, socket)
	if err := server.Serve(l); err != nil {
		log.Fatalf("serving: %v", err)
	}
}
