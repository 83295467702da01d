"""Moving fields between Caffe's messages by path, as the format upgrades do."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from caffec.errors import InternalError


class UpgradeWarning(UserWarning):
    """An old-format field that has no home in the current format and is dropped, as in Caffe."""


def field_at(message_class: type[Message], path: Sequence[str]) -> FieldDescriptor:
    """The FieldDescriptor at the end of ``path``, starting from ``message_class``."""
    descriptor = message_class.DESCRIPTOR
    field = None
    for name in path:
        field = descriptor.fields_by_name[name]
        descriptor = field.message_type
    return field


def put(message: Message, path: Sequence[str], value: object, value_is_list: bool) -> None:
    """Store ``value`` at ``path`` under ``message``, appending where the target is repeated."""
    for name in path[:-1]:
        message = getattr(message, name)
    name = path[-1]
    field = message.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        raise InternalError(
            f"caffec's Caffe schema has no field {message.DESCRIPTOR.name}.{name}",
            hint="the upgrade tables and caffe.proto disagree; please report this",
        )
    values = list(value) if value_is_list else [value]
    if field.is_repeated:
        container = getattr(message, name)
        for item in values:
            if field.message_type is not None:
                container.add().CopyFrom(item)
            else:
                container.append(item)
    elif field.message_type is not None:
        getattr(message, name).CopyFrom(values[-1])
    else:
        setattr(message, name, values[-1])


def copy_fields(src: Message, dst: Message, skip: Sequence[str]) -> None:
    """Copy every set field of ``src`` into ``dst`` (same type) except those in ``skip``."""
    for field, value in src.ListFields():
        if field.name not in skip:
            put(dst, (field.name,), value, field.is_repeated)
