"""Run one Flask app on every core, and let its workers talk to each other."""

from .extension import FlaskCluster, GatherIncomplete, MessageError
from .wire import BrokerBufferFull

__all__ = ["BrokerBufferFull", "FlaskCluster", "GatherIncomplete", "MessageError"]
__version__ = "0.1.0"
