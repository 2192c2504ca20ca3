namespace Fiddler.Actors.Placement;

/// <summary>A GPU budget that cannot hold what must live on the GPU; the message says how much is needed vs given.</summary>
public sealed class PlacementException(string message) : Exception(message);
