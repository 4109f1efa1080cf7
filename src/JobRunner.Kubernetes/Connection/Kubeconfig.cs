using YamlDotNet.RepresentationModel;

namespace JobRunner.Kubernetes.Connection;

/// <summary>A kubeconfig file or its selected context is unusable. The message names the file, the context and the problem.</summary>
internal sealed class KubeconfigException(string message) : Exception(message);

/// <summary>The parts of a kubeconfig JobRunner uses (clusters, users, contexts), read with YamlDotNet's representation model.</summary>
internal sealed class Kubeconfig
{
    private readonly Dictionary<string, YamlMappingNode> _clusters = new(StringComparer.Ordinal);
    private readonly Dictionary<string, YamlMappingNode> _users = new(StringComparer.Ordinal);
    private readonly Dictionary<string, YamlMappingNode> _contexts = new(StringComparer.Ordinal);
    private readonly Dictionary<YamlNode, string> _files = new(ReferenceEqualityComparer.Instance); // the file of each entry

    private Kubeconfig(string path)
    {
        Path = path;
    }

    public string Path { get; }

    public string? CurrentContext { get; private set; }

    public IReadOnlyCollection<string> Contexts => _contexts.Keys;

    public static Kubeconfig Load(string path) => Load(path, emptyIsEmpty: false);

    /// <param name="path">The file.</param>
    /// <param name="emptyIsEmpty">Whether a file without a YAML document (empty, blank, comments only) is a config without entries rather than an error.</param>
    private static Kubeconfig Load(string path, bool emptyIsEmpty)
    {
        string text;
        try
        {
            text = File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new KubeconfigException($"The kubeconfig '{path}' cannot be read: {e.Message} Set KubernetesEngineOptions.KubeconfigPath (or KUBECONFIG) to a readable file, or set Server or InCluster.");
        }

        return Parse(text, path, emptyIsEmpty);
    }

    /// <summary>
    /// Loads the files of a <c>KUBECONFIG</c> list and merges them as kubectl does: files that do not exist are skipped;
    /// the first file that names a cluster, user or context wins for that name, and the first that sets
    /// <c>current-context</c> sets it; an empty (or blank) file adds nothing, as in client-go. Relative paths in an entry
    /// stay relative to the file that defines it.
    /// </summary>
    public static Kubeconfig LoadMerged(IReadOnlyList<string> paths)
    {
        var existing = paths.Where(File.Exists).ToList();
        if (existing.Count == 0)
        {
            throw new KubeconfigException($"None of the kubeconfig files of KUBECONFIG exist ({List(paths)}). Set KUBECONFIG (or KubernetesEngineOptions.KubeconfigPath) to readable files, or set Server or InCluster.");
        }

        if (existing.Count == 1)
        {
            return Load(existing[0]);
        }

        var merged = new Kubeconfig(string.Join(System.IO.Path.PathSeparator, existing));
        foreach (var path in existing)
        {
            var config = Load(path, emptyIsEmpty: true);
            merged.CurrentContext ??= config.CurrentContext;
            Merge(config._clusters, merged._clusters);
            Merge(config._users, merged._users);
            Merge(config._contexts, merged._contexts);

            void Merge(Dictionary<string, YamlMappingNode> from, Dictionary<string, YamlMappingNode> into)
            {
                foreach (var (name, node) in from)
                {
                    if (into.TryAdd(name, node))
                    {
                        merged._files[node] = path;
                    }
                }
            }
        }

        return merged;
    }

    /// <summary>The file that defines <paramref name="entry"/> (a cluster or user of <see cref="Select"/>), which relative paths in it are relative to.</summary>
    public string FileOf(YamlMappingNode entry) => _files.GetValueOrDefault(entry, Path);

    public static Kubeconfig Parse(string text, string path, bool emptyIsEmpty = false)
    {
        var config = new Kubeconfig(path);
        var stream = new YamlStream();
        try
        {
            stream.Load(new StringReader(text));
        }
        catch (YamlDotNet.Core.YamlException e)
        {
            throw new KubeconfigException($"The kubeconfig '{path}' is not valid YAML: {e.Message}");
        }

        if (stream.Documents.Count == 0 && emptyIsEmpty)
        {
            return config;
        }

        if (stream.Documents.Count == 0 || stream.Documents[0].RootNode is not YamlMappingNode root)
        {
            throw new KubeconfigException($"The kubeconfig '{path}' is empty or not a mapping.");
        }

        config.CurrentContext = Scalar(root, "current-context") is { Length: > 0 } current ? current : null;
        config.ReadNamed(root, "clusters", "cluster", config._clusters);
        config.ReadNamed(root, "users", "user", config._users);
        config.ReadNamed(root, "contexts", "context", config._contexts);
        return config;
    }

    /// <summary>The settings of a context: its cluster and user entries.</summary>
    public (string Context, YamlMappingNode Cluster, YamlMappingNode User) Select(string? context)
    {
        var name = context ?? CurrentContext
            ?? throw new KubeconfigException($"The kubeconfig '{Path}' has no current-context. Set KubernetesEngineOptions.Context to one of: {List(_contexts.Keys)}.");
        if (!_contexts.TryGetValue(name, out var entry))
        {
            throw new KubeconfigException($"The kubeconfig '{Path}' has no context '{name}'. Set KubernetesEngineOptions.Context to one of: {List(_contexts.Keys)}.");
        }

        var clusterName = Scalar(entry, "cluster");
        if (clusterName is null || !_clusters.TryGetValue(clusterName, out var cluster))
        {
            throw new KubeconfigException($"Context '{name}' of kubeconfig '{Path}' refers to cluster '{clusterName}', which is not defined. Add it under 'clusters', or fix the context.");
        }

        var userName = Scalar(entry, "user");
        YamlMappingNode user;
        if (userName is null)
        {
            user = new YamlMappingNode();
        }
        else if (!_users.TryGetValue(userName, out user!))
        {
            throw new KubeconfigException($"Context '{name}' of kubeconfig '{Path}' refers to user '{userName}', which is not defined. Add it under 'users', or fix the context.");
        }

        return (name, cluster, user);
    }

    public static string? Scalar(YamlMappingNode node, string key)
        => node.Children.TryGetValue(new YamlScalarNode(key), out var value) && value is YamlScalarNode scalar ? scalar.Value : null;

    public static YamlNode? Child(YamlMappingNode node, string key)
        => node.Children.TryGetValue(new YamlScalarNode(key), out var value) ? value : null;

    private static string List(IEnumerable<string> names) => string.Join(", ", names.Select(static n => "'" + n + "'"));

    private void ReadNamed(YamlMappingNode root, string section, string inner, Dictionary<string, YamlMappingNode> into)
    {
        if (Child(root, section) is not YamlSequenceNode items)
        {
            return;
        }

        foreach (var item in items)
        {
            if (item is YamlMappingNode entry && Scalar(entry, "name") is { } name)
            {
                into[name] = Child(entry, inner) as YamlMappingNode ?? new YamlMappingNode();
            }
            else
            {
                throw new KubeconfigException($"The kubeconfig '{Path}' has an entry under '{section}' without a name.");
            }
        }
    }
}
