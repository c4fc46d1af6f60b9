package integration

import (
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// clusterDir holds the cluster example this test runs.
const clusterDir = "../examples/cluster"

// freePorts returns n different loopback ports that were free a moment
// ago.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("finding a free port: %v", err)
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// exampleSiteBody is the body of the site block that opens with the line
// header in an example Caddyfile: the lines after it up to the closing
// brace at the start of a line.
func exampleSiteBody(t *testing.T, file, header string) string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) != header {
			continue
		}
		for j := i + 1; j < len(lines); j++ {
			if lines[j] == "}" {
				return strings.Join(lines[i+1:j], "\n")
			}
		}
		t.Fatalf("%s: the block %q has no closing brace", file, header)
	}
	t.Fatalf("%s: no line %q", file, header)
	return ""
}

// replaceIn replaces old with new in s, failing the test if old is not
// there: the examples changed and this test must be told how.
func replaceIn(t *testing.T, what, s, old, new string) string {
	t.Helper()
	if !strings.Contains(s, old) {
		t.Fatalf("%s no longer contains %q; update TestCluster to the example:\n%s", what, old, s)
	}
	return strings.ReplaceAll(s, old, new)
}

// clusterCaddyfile is examples/cluster run on loopback in the one
// in-process Caddy: the front on env.ports.http proxying to two node
// sites on their own ports, each node with its own cache directory, all
// of them serving the private bucket through the recording proxy.
func clusterCaddyfile(t *testing.T, nodePorts []int, nodeDirs []string) string {
	t.Helper()
	front := exampleSiteBody(t, filepath.Join(clusterDir, "Caddyfile"), "media.example.social {")
	var upstreams []string
	for _, p := range nodePorts {
		upstreams = append(upstreams, "127.0.0.1:"+strconv.Itoa(p))
	}
	front = replaceIn(t, "the front", front,
		"to 10.0.0.11:8080 10.0.0.12:8080 10.0.0.13:8080", "to "+strings.Join(upstreams, " "))
	// Check health often enough that a node is in the pool at once.
	front = replaceIn(t, "the front", front, "health_interval 10s", "health_interval 1s")

	node := exampleSiteBody(t, filepath.Join(clusterDir, "node.Caddyfile"), ":{$NODE_PORT:8080} {")
	node = replaceIn(t, "the node", node, "bucket myinstance-media", "bucket "+privateBucket)
	node = replaceIn(t, "the node", node, "endpoint https://s3.fr-par.scw.cloud", "endpoint "+env.proxy.URL()+"\npath_style")
	node = replaceIn(t, "the node", node, "region fr-par", "region us-east-1")

	sites := []sitePort{{port: env.ports.http, body: front}}
	for i, p := range nodePorts {
		body := replaceIn(t, "the node", node, "{$NODE_CACHE_DIR}", nodeDirs[i])
		// Test wiring only: name the node in its answers, so loadCluster
		// can tell when the front has every node in its pool.
		body = "\theader " + nodeHeader + " " + strconv.Itoa(i) + "\n" + body
		sites = append(sites, sitePort{port: p, body: body})
	}
	// The example's global log filter keeps the purge secret out of the
	// front's debug lines; the suite's log, scanned for secrets, gets it
	// too, and the test fails if the example loses it.
	const filter = "request>headers>Cache-Buster-Secret delete"
	if !strings.Contains(string(readFileOrNil(filepath.Join(clusterDir, "Caddyfile"))), filter) {
		t.Fatalf("examples/cluster/Caddyfile no longer filters the purge secret out of its logs (%q)", filter)
	}
	return strings.Replace(caddyfileSites(env.ports, sites...), "\t\tformat json\n",
		"\t\tformat filter {\n\t\t\twrap json\n\t\t\t"+filter+"\n\t\t}\n", 1)
}

// nodeHeader names, in the test's node sites, the node that answered.
const nodeHeader = "X-Test-Node"

// loadCluster loads the cluster and waits until the front reaches every
// node. The front's first health check runs as the configuration loads,
// possibly before the node sites listen, and a node it found down stays
// out of the pool until the next check passes; meanwhile uri_hash sends
// its objects to the other node. So the wait probes directory paths (the
// node's 404, no S3 request) until each node has answered one.
func loadCluster(t *testing.T, nodeDirs []string) {
	t.Helper()
	t.Setenv("S3_ACCESS_KEY", env.gateway.AccessKey)
	t.Setenv("S3_SECRET_KEY", env.gateway.SecretKey)
	t.Setenv("CACHE_BUSTER_SECRET", purgeSecret)
	cfg := clusterCaddyfile(t, freePorts(t, len(nodeDirs)), nodeDirs)
	load(t, cfg)
	answered := map[string]bool{}
	var last response
	probe := 0
	if !waitFor(15*time.Second, func() bool {
		for range 16 {
			probe++
			last = do(t, http.MethodGet, "/warm-up/"+strconv.Itoa(probe%16)+"/")
			if last.status == http.StatusNotFound && last.header.Get("X-Cache-Status") == "BYPASS" {
				if node := last.header.Get(nodeHeader); node != "" {
					answered[node] = true
				}
			}
		}
		return len(answered) == len(nodeDirs)
	}) {
		t.Fatalf("the front did not reach every node within 15s: nodes answered %v, last answer %d %v\n%s",
			answered, last.status, last.header, cfg)
	}
	env.proxy.Reset()
}

// nodeHolding returns the index of the one node directory holding obj's
// entry, waiting for the entry to be committed; it fails if none or both
// do.
func nodeHolding(t *testing.T, dirs []string, obj s3test.Seeded) int {
	t.Helper()
	holder := -1
	waitFor(5*time.Second, func() bool {
		for i, d := range dirs {
			if exists(entryPathFor(d, obj)) {
				holder = i
				return true
			}
		}
		return false
	})
	if holder < 0 {
		t.Fatalf("no node holds an entry for %s", obj.Key)
	}
	for i, d := range dirs {
		if i != holder && exists(entryPathFor(d, obj)) {
			t.Fatalf("%s is cached on node %d and node %d", obj.Key, holder, i)
		}
	}
	return holder
}

// TestClusterCachesEachObjectOnOneNode runs examples/cluster: repeated
// requests for an object through the front reach the same node (one S3
// GET in all, HITs after), different objects spread over both nodes, and
// Mastodon's cache-buster request sent to the front purges the node that
// holds the object.
func TestClusterCachesEachObjectOnOneNode(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir()}
	loadCluster(t, dirs)
	manifest := seedObjects(t, webpObjects(t, 20, 4<<10, 7000)...)
	env.proxy.Reset()

	var objs []s3test.Seeded
	for _, o := range webpObjects(t, 20, 4<<10, 7000) {
		objs = append(objs, manifest.Get(o.Key))
	}
	holder := map[string]int{}
	perNode := make([]int, len(dirs))
	for _, obj := range objs {
		wantGet(t, obj, "MISS")
		holder[obj.Key] = nodeHolding(t, dirs, obj)
		perNode[holder[obj.Key]]++
		for range 3 {
			wantGet(t, obj, "HIT")
		}
		// The front drops the query: still the same node, still a HIT.
		wantFromCache(t, get(t, urlPath(obj.Key)+"?v=2"), obj, "HIT")
	}
	for _, obj := range objs {
		if got := env.proxy.CountFor(http.MethodGet, s3Path(privateBucket, obj.S3Key)); got != 1 {
			t.Errorf("S3 saw %d GETs of %s, want 1", got, obj.Key)
		}
		if h := nodeHolding(t, dirs, obj); h != holder[obj.Key] {
			t.Errorf("%s moved from node %d to node %d", obj.Key, holder[obj.Key], h)
		}
	}
	if got := env.proxy.Count(); got != len(objs) {
		t.Errorf("S3 requests = %d, want %d (one GET per object): %s", got, len(objs), describeS3Requests())
	}
	for i, n := range perNode {
		if n == 0 {
			t.Errorf("node %d cached none of %d objects (per node: %v): uri_hash does not spread them", i, len(objs), perNode)
		}
		if files := entryFiles(t, dirs[i]); len(files) != n {
			t.Errorf("node %d: %d entry files, want %d", i, len(files), n)
		}
	}
	t.Logf("objects per node: %v", perNode)

	// Mastodon's cache buster, sent to the front like any media request.
	obj := objs[0]
	node := holder[obj.Key]
	wrong := do(t, http.MethodGet, urlPath(obj.Key), "Cache-Buster-Secret: not-the-secret")
	wantFromCache(t, wrong, obj, "HIT")
	r := do(t, http.MethodGet, urlPath(obj.Key), "Cache-Buster-Secret: "+purgeSecret)
	if r.status != http.StatusNoContent || len(r.body) != 0 {
		t.Fatalf("purge through the front: status %d, %d body bytes; want 204 and no body", r.status, len(r.body))
	}
	if !waitFor(5*time.Second, func() bool { return !exists(entryPathFor(dirs[node], obj)) }) {
		t.Fatalf("node %d still holds %s after the purge", node, obj.Key)
	}
	env.proxy.Reset()
	wantGet(t, obj, "MISS")
	wantS3Fetches(t, obj, 1)
	if h := nodeHolding(t, dirs, obj); h != node {
		t.Errorf("after the purge %s was cached on node %d, want node %d", obj.Key, h, node)
	}
	// The other objects were not touched.
	env.proxy.Reset()
	wantGet(t, objs[1], "HIT")
	wantS3Requests(t, 0)
}
