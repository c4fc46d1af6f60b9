package main

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// cpuSample is /proc/stat's time counters of each core, in clock ticks:
// busy (everything but idle and iowait) and total.
type cpuSample map[int][2]uint64

func readCPU() cpuSample {
	s := cpuSample{}
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s
	}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 6 || !strings.HasPrefix(fields[0], "cpu") || fields[0] == "cpu" {
			continue
		}
		core, err := strconv.Atoi(strings.TrimPrefix(fields[0], "cpu"))
		if err != nil {
			continue
		}
		var busy, total uint64
		for i, f := range fields[1:] {
			v, _ := strconv.ParseUint(f, 10, 64)
			total += v
			if i != 3 && i != 4 { // idle, iowait
				busy += v
			}
		}
		s[core] = [2]uint64{busy, total}
	}
	return s
}

// busyPercent is how busy core was between two samples.
func busyPercent(before, after cpuSample, core int) float64 {
	a, b := before[core], after[core]
	if b[1] <= a[1] {
		return 0
	}
	return 100 * float64(b[0]-a[0]) / float64(b[1]-a[1])
}

// quietThreshold is how busy a core may be, in percent, while every
// process of the bench is idle, for the machine to count as quiet.
const quietThreshold = 10

// waitQuiet waits, at most for budget, until no core is busier than
// quietThreshold while the bench itself is idle, so a measurement does not
// share its cores with someone else's build or test. It returns how busy
// the busiest core was at the last look; the caller warns when that is
// still over the threshold.
func waitQuiet(budget time.Duration) float64 {
	deadline := time.Now().Add(budget)
	for {
		before := readCPU()
		time.Sleep(250 * time.Millisecond)
		after := readCPU()
		busiest := 0.0
		for core := range after {
			busiest = max(busiest, busyPercent(before, after, core))
		}
		if busiest <= quietThreshold || time.Now().After(deadline) {
			return busiest
		}
	}
}

// procTimes is a process's parent and CPU time, its reaped children's
// included, in clock ticks.
type procTimes struct {
	ppid  int
	ticks uint64
}

// readProcs reads every process's procTimes from /proc.
func readProcs() map[int]procTimes {
	procs := make(map[int]procTimes)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The command name is in parentheses and may contain anything;
		// the fields after it start with the state, then the ppid;
		// utime, stime, cutime and cstime are the 12th to 15th.
		s := string(stat)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) < 15 {
			continue
		}
		p := procTimes{}
		p.ppid, _ = strconv.Atoi(fields[1])
		for _, f := range fields[11:15] {
			v, _ := strconv.ParseUint(f, 10, 64)
			p.ticks += v
		}
		procs[pid] = p
	}
	return procs
}

// foreignCPU is how much CPU, in cores, processes other than this one and
// its descendants used between two readProcs, over wall. Kernel threads
// are left out: they mostly carry the bench's own loopback traffic.
func foreignCPU(before, after map[int]procTimes, wall time.Duration) float64 {
	ours := treeOf(after, os.Getpid())
	var ticks uint64
	for pid, a := range after {
		if ours[pid] || pid == 2 || a.ppid == 2 {
			continue
		}
		if b, ok := before[pid]; ok && b.ticks <= a.ticks {
			ticks += a.ticks - b.ticks
		} else if !ok {
			ticks += a.ticks
		}
	}
	// A parent that reaps a child is charged all of the child's time at
	// once, which can exceed the window; no more than every core can
	// have been taken.
	return min(float64(ticks)/clockTicks/wall.Seconds(), float64(runtime.NumCPU()))
}

// treeOf is root and every process below it in procs.
func treeOf(procs map[int]procTimes, root int) map[int]bool {
	children := make(map[int][]int)
	for pid, p := range procs {
		children[p.ppid] = append(children[p.ppid], pid)
	}
	tree := map[int]bool{root: true}
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			if !tree[c] {
				tree[c] = true
				queue = append(queue, c)
			}
		}
	}
	return tree
}

// clockTicks is USER_HZ, the unit of /proc's times: 100 on every Linux
// architecture Go runs on.
const clockTicks = 100
