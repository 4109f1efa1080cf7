namespace JobRunner.Kubernetes.Testing;

/// <summary>A request the fake server received, as sent on the wire.</summary>
/// <param name="Method">The HTTP method.</param>
/// <param name="Path">The path.</param>
/// <param name="Query">The query string, with its leading '?', or empty.</param>
/// <param name="Headers">The request headers (last value of each).</param>
/// <param name="Body">The body as text, or empty.</param>
public sealed record FakeRequest(string Method, string Path, string Query, IReadOnlyDictionary<string, string> Headers, string Body)
{
    /// <summary>Gets whether the request is a watch (<c>watch=true</c>).</summary>
    public bool IsWatch => Query.Contains("watch=true", StringComparison.Ordinal) || Query.Contains("watch=1", StringComparison.Ordinal);
}
