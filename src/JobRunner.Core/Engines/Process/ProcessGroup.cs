using System.Runtime.InteropServices;

namespace JobRunner.Engines.Process;

/// <summary>
/// Signals to a whole process group. The engine starts every child through <c>setsid</c>, so the child leads its own
/// group and its descendants share it: one signal reaches the whole tree.
/// </summary>
internal static partial class ProcessGroup
{
    public const int SigTerm = 15;
    public const int SigKill = 9;
    public const string SetsidPath = "/usr/bin/setsid";

    public static bool IsSupported { get; } = (OperatingSystem.IsLinux() || OperatingSystem.IsMacOS()) && File.Exists(SetsidPath);

    /// <summary>Sends <paramref name="signal"/> to the group led by <paramref name="pid"/>; a group that is gone is ignored.</summary>
    public static void Signal(int pid, int signal)
    {
        if (IsSupported && pid > 0)
        {
            _ = Kill(-pid, signal);
        }
    }

    /// <summary>Sends <paramref name="signal"/> to one process; a process that is gone is ignored.</summary>
    public static void SignalProcess(int pid, int signal)
    {
        if ((OperatingSystem.IsLinux() || OperatingSystem.IsMacOS()) && pid > 0)
        {
            _ = Kill(pid, signal);
        }
    }

    /// <summary>Sends <paramref name="signal"/> to the group led by <paramref name="pid"/>, or to that process alone.</summary>
    public static void Send(int pid, int signal, bool group)
    {
        if (group)
        {
            Signal(pid, signal);
        }
        else
        {
            SignalProcess(pid, signal);
        }
    }

    /// <summary>
    /// The descendants of <paramref name="pid"/> as they are now, each with its start time (to tell it from a later
    /// process that reuses its id); read from <c>/proc</c> on Linux, none elsewhere. For a tree without a group of its own.
    /// </summary>
    public static List<(int Pid, long Start)> Descendants(int pid)
    {
        var found = new List<(int, long)>();
        if (!OperatingSystem.IsLinux())
        {
            return found;
        }

        var children = new Dictionary<int, List<(int Pid, long Start)>>();
        foreach (var directory in Directory.EnumerateDirectories("/proc"))
        {
            if (int.TryParse(Path.GetFileName(directory), out var child) && ReadStat(child) is { } stat)
            {
                if (!children.TryGetValue(stat.Parent, out var list))
                {
                    children[stat.Parent] = list = [];
                }

                list.Add((child, stat.Start));
            }
        }

        var pending = new Queue<int>([pid]);
        while (pending.TryDequeue(out var parent))
        {
            foreach (var child in children.GetValueOrDefault(parent) ?? [])
            {
                found.Add(child);
                pending.Enqueue(child.Pid);
            }
        }

        return found;
    }

    /// <summary>Sends <paramref name="signal"/> to each of <paramref name="processes"/> still running with the same start time.</summary>
    public static void SignalEach(List<(int Pid, long Start)> processes, int signal)
    {
        foreach (var (pid, start) in processes)
        {
            if (ReadStat(pid) is { } stat && stat.Start == start)
            {
                SignalProcess(pid, signal);
            }
        }
    }

    /// <summary>A process's parent and start time from <c>/proc/{pid}/stat</c>, or <see langword="null"/> when it is gone.</summary>
    private static (int Parent, long Start)? ReadStat(int pid)
    {
        try
        {
            // pid (comm) state ppid ... starttime: the command may hold spaces and parentheses, so fields count from the last ')'.
            var text = File.ReadAllText($"/proc/{pid}/stat");
            var fields = text[(text.LastIndexOf(')') + 2)..].Split(' ');
            return (int.Parse(fields[1], System.Globalization.CultureInfo.InvariantCulture), long.Parse(fields[19], System.Globalization.CultureInfo.InvariantCulture));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException or ArgumentOutOfRangeException)
        {
            return null;
        }
    }

    public static string SignalName(int signal) => signal switch
    {
        1 => "SIGHUP",
        2 => "SIGINT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "signal " + signal,
    };

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);
}
